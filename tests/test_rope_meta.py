"""rope_tables and the rope op against Meta's own code (llama_models/llama3/model.py):
precompute_freqs_cis / apply_scaling for the tables, apply_rotary_emb for the rotation."""

import numpy as np
import pytest
import torch
from llama_models.llama3.model import apply_rotary_emb, apply_scaling, precompute_freqs_cis

import llama_nb.ops  # noqa: F401  (registers every op)
from llama_nb.errors import LlamaNbError
from llama_nb.io.params import RopeScaling
from llama_nb.ops import registry
from llama_nb.ops.rope_tables import rope_frequencies, rope_tables

registry.load_plugins()
THETA = 500000.0
POSITIONS = [0, 1, 8191, 8192, 131071]  # both sides of Llama 3's original 8K context, the 128K end
MAX_POS = 131072


@pytest.fixture(scope="module")
def meta_tables():
    """Meta's freqs_cis for every (head_dim, scaled), computed once: {key: complex64[P, Dh/2]}."""
    return {
        (head_dim, scaled): precompute_freqs_cis(head_dim, MAX_POS, THETA, scaled).numpy()
        for head_dim in (128, 64)
        for scaled in (False, True)
    }


@pytest.mark.parametrize("head_dim", [128, 64])
@pytest.mark.parametrize("scaled", [False, True])
def test_frequencies_equal_metas_bit_for_bit(head_dim, scaled):
    # Meta's first line of precompute_freqs_cis, then its apply_scaling.
    freqs = 1.0 / (THETA ** (torch.arange(0, head_dim, 2)[: (head_dim // 2)].float() / head_dim))
    if scaled:
        freqs = apply_scaling(freqs)
    np.testing.assert_array_equal(rope_frequencies(head_dim, THETA, RopeScaling() if scaled else None), freqs.numpy())


@pytest.mark.parametrize("head_dim", [128, 64])
@pytest.mark.parametrize("scaled", [False, True])
def test_tables_match_precompute_freqs_cis(head_dim, scaled, meta_tables):
    cos, sin = rope_tables(head_dim, MAX_POS, THETA, RopeScaling() if scaled else None)
    assert cos.shape == sin.shape == (MAX_POS, head_dim // 2) and cos.dtype == sin.dtype == np.float32
    want = meta_tables[(head_dim, scaled)][POSITIONS]
    np.testing.assert_allclose(cos[POSITIONS], want.real, rtol=0, atol=2e-6)
    np.testing.assert_allclose(sin[POSITIONS], want.imag, rtol=0, atol=2e-6)


def test_scaling_changes_the_low_frequencies_only():
    plain, scaled = rope_frequencies(128, THETA, None), rope_frequencies(128, THETA, RopeScaling())
    wavelen = 2 * np.pi / plain
    assert np.array_equal(plain[wavelen < 2048], scaled[wavelen < 2048])
    np.testing.assert_allclose(scaled[wavelen > 8192], plain[wavelen > 8192] / 8, rtol=1e-7)


@pytest.mark.parametrize("impl", sorted(registry.impls[("rope", None, None)]))
@pytest.mark.parametrize("start_pos,n_tokens", [(0, 7), (8190, 3), (131068, 4)])
def test_rope_matches_apply_rotary_emb(impl, start_pos, n_tokens, meta_tables, rng):
    head_dim, n_heads, n_kv_heads = 128, 32, 8
    cos, sin = rope_tables(head_dim, MAX_POS, THETA, RopeScaling())
    q = rng.standard_normal((n_tokens, n_heads, head_dim), dtype=np.float32)
    k = rng.standard_normal((n_tokens, n_kv_heads, head_dim), dtype=np.float32)
    freqs_cis = torch.from_numpy(meta_tables[(head_dim, True)][start_pos : start_pos + n_tokens])
    want_q, want_k = apply_rotary_emb(torch.from_numpy(q[None]), torch.from_numpy(k[None]), freqs_cis)
    rope = registry.get("rope", impl)
    rope(q, cos, sin, start_pos)
    rope(k, cos, sin, start_pos)
    # |x| ~ 1; the tables agree to 2e-6 and the products add an ulp or two.
    np.testing.assert_allclose(q, want_q[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(k, want_k[0].numpy(), rtol=0, atol=1e-5)


def test_rope_tables_reject_bad_sizes():
    with pytest.raises(LlamaNbError, match="head_dim"):
        rope_tables(127, 16, THETA, None)
    with pytest.raises(LlamaNbError, match="max_pos"):
        rope_tables(128, 0, THETA, None)


def test_factor_32_divides_the_slow_frequencies_by_32():
    """Llama 3.2 1B/3B's factor: the same blend as Meta's apply_scaling with 32 for 8."""
    plain = rope_frequencies(64, THETA, None)
    eight, thirty_two = rope_frequencies(64, THETA, RopeScaling()), rope_frequencies(64, THETA, RopeScaling(factor=32.0))
    wavelen = 2 * np.pi / plain
    assert np.array_equal(thirty_two[wavelen < 2048], plain[wavelen < 2048])
    np.testing.assert_allclose(thirty_two[wavelen > 8192], plain[wavelen > 8192] / 32, rtol=1e-7)
    assert (thirty_two[wavelen > 2048] < eight[wavelen > 2048]).all()
