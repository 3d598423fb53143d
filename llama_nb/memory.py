"""Where large arrays start in memory: 64-byte aligned, at a chosen offset into a page.

NumPy's large arrays start 16 bytes into a page (glibc's malloc header). The kernels load 64
bytes at a time (one AVX-512 register, one cache line); from an address 16 bytes past a line,
every such load spans two lines. Measured (vdpbf16ps prefill tile, 128 x 2048 x 8192, 1 thread,
best of 30): weights and the bf16 bits of x both at 16 mod 64, 6.92 ms; x aligned, 6.05; both
aligned, 5.81 (1.19x); in the model, Llama 3.2 1B pp128 with x's bits aligned: 1.13-1.19x.

And a kernel that streams rows of the weights and of the converted activations at equal
addresses modulo 4096 suffers 4K aliasing (the prefill tile ran 8.1 ms against 6.5-6.7 ms half a
page apart), so the ops' scratch, where linear puts the converted activations, starts half a page
from where the weights and the other buffers start (llama_nb/model/state.py).
"""

from __future__ import annotations

import numpy as np

LINE = 64  # bytes: a cache line, an AVX-512 register
ARRAY_PAGE_OFFSET = LINE  # weights read into memory and the model's buffers
SCRATCH_PAGE_OFFSET = 2048 + LINE  # the ops' scratch: half a page from the others


def empty_at(shape, dtype, page_offset: int = ARRAY_PAGE_OFFSET) -> np.ndarray:
    """An uninitialised C-contiguous array starting `page_offset` bytes into a 4 KiB page (a
    multiple of LINE: aligned); over-allocates by one page. Large ones still get transparent huge
    pages, which NumPy asks for on its own allocation."""
    return _at(np.empty, shape, dtype, page_offset)


def zeros_at(shape, dtype, page_offset: int = ARRAY_PAGE_OFFSET) -> np.ndarray:
    """empty_at, zeros: from np.zeros (calloc), so a large buffer (a KV cache of many GB) costs no
    time at allocation and its pages are committed only as they are first written."""
    return _at(np.zeros, shape, dtype, page_offset)


def _at(allocate, shape, dtype, page_offset: int) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = allocate(nbytes + 4096, np.uint8)
    start = (page_offset - raw.ctypes.data) % 4096
    return raw[start : start + nbytes].view(dtype).reshape(shape)
