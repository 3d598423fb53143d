"""rope: rotary position embedding, in place, with Meta's interleaved pairs.

Meta's apply_rotary_emb views the head vector as Dh/2 complex numbers (x[2i] + 1j*x[2i+1]) and
multiplies each by exp(1j * angle[p, i]); pairs are adjacent elements, NOT Hugging Face's
rotate_half layout (x[i], x[i + Dh/2]). For token t, head h, pair i and position p = start_pos + t:
    (x[t,h,2i], x[t,h,2i+1]) <- (x0*cos[p,i] - x1*sin[p,i],  x0*sin[p,i] + x1*cos[p,i])
x          float32[T, H, Dh]   queries or keys, rotated in place
cos, sin   float32[P, Dh/2]    from ops/rope_tables.py's rope_tables()
start_pos  int                 absolute position of x[0]
Parallel over (token, head) pairs.
"""

from __future__ import annotations

from numba import prange

from llama_nb.ops.jit import twins
from llama_nb.ops.registry import register


@twins
def _rope(x, cos, sin, start_pos):
    n_tokens, n_heads, head_dim = x.shape
    for th in prange(n_tokens * n_heads):
        t, h = th // n_heads, th % n_heads
        pos = start_pos + t
        v, c, s = x[t, h], cos[pos], sin[pos]
        for i in range(head_dim // 2):
            x0, x1 = v[2 * i], v[2 * i + 1]
            v[2 * i] = x0 * c[i] - x1 * s[i]
            v[2 * i + 1] = x0 * s[i] + x1 * c[i]


@register("rope", "numba")
def rope(x, cos, sin, start_pos: int) -> None:
    """Rotate x[T, H, Dh] in place for positions start_pos .. start_pos + T - 1."""
    _rope.pick(2 * x.nbytes)(x, cos, sin, int(start_pos))
