"""Several sequences in one pass (Transformer.forward_batch, model/batch.py) against each sequence run
alone (Transformer.forward, model/generate.py's generate), on the demo model.

What is the same and why: every op but attention works row by row and attention runs per sequence,
so a sequence's logits beside others equal its logits alone bit for bit where the product kernels
agree. At bf16 precision on CPUs with AVX512_BF16 a pass of one row (the decode matvec) and a pass
of a few (T <= FEW_TOKENS: matvec_bf16dot_rows, a batched decode step) sum every product the same
way, at any K; a pass of more rows (the prefill tiles) sums K in blocks of 2048, so it agrees with
them for K <= 2048 (the demo model's widths) and differs in the last bits beyond (Llama 3.2 1B's
w2 has K = 8192, the 8B's every matrix K >= 4096). At float32 precision (and without
AVX512_BF16) the matvec (LLVM's vectorised sum) and the FMA tiles sum in other orders at every K:
measured 4.8e-6 at most on the demo model's logits of -10..+9. The tests hold those cases within
LOGIT_BOUND and to the same greedy tokens but at near-ties."""

from __future__ import annotations

import numpy as np
import pytest

import llama_nb
import llama_nb.model.load
from llama_nb.demo import demo_model_dir
from llama_nb.errors import LlamaNbError
from llama_nb.model.batch import BatchGenerator, generate_batch
from llama_nb.model.generate import GenerationStats, generate
from llama_nb.ops.jit import HAS_AMX_BF16, HAS_AVX512_BF16

LOGIT_BOUND = 1e-4  # float32 precision: matvec vs tile sums, 20x the difference measured
# bf16 on the float32 FMA kernels (a CPU without vdpbf16ps): matvec and tiles sum in other orders, and
# the next layer's rounding to bf16 turns a last-bit difference into a whole bf16 step (2^-8 of the
# value) now and then, which the layers carry on (seen: 0.031 on an AVX2 host, greedy tokens equal)
BF16_FMA_LOGIT_BOUND = 0.1
# ... and so on a CPU with AMX, whose prefill tiles (16 tokens or more: the batched prompts here)
# sum each output as one float32 chain over K (ops/matmul_amx.py), the decode kernels in 16 lanes
# (seen: 0.030 on the demo model, 0.0012 on the long-row model, greedy tokens equal).
AMX_LOGIT_BOUND = BF16_FMA_LOGIT_BOUND
TEXTS = ["In the beginning God created", "And the LORD spake unto Moses, saying,", "Blessed", "And it came to pass, when"]


_LOADED: dict[str, llama_nb.model.load.Llama] = {}


def demo(precision: str):
    if precision not in _LOADED:
        _LOADED[precision] = llama_nb.load_model(demo_model_dir(), ctx=128, slots=3, precision=precision, max_batch=40)
        _LOADED[precision].compile()
    return _LOADED[precision]


@pytest.fixture
def llm():
    return demo("bf16")


def ids(llm, text):
    return llm.tokenizer.encode(text, bos=True, eos=False)


def greedy_logits_alone(model, prompt, steps):
    logits = [model.forward(prompt, 0).copy()]
    pos = len(prompt)
    for _ in range(steps):
        logits.append(model.forward([int(np.argmax(logits[-1]))], pos).copy())
        pos += 1
    return logits


@pytest.mark.parametrize("precision", ["bf16", "float32"])
def test_a_sequence_beside_others_has_its_logits_alone(precision):
    llm = demo(precision)
    model = llm.model
    a, b, c = (ids(llm, t) for t in TEXTS[:3])
    alone = greedy_logits_alone(model, a, 12)
    out = model.forward_batch([(0, b, 0), (2, a, 0), (1, c, 0)])  # a in slot 2, between the others
    state = {slot: [int(np.argmax(out[i])), len(p)] for i, (slot, p) in enumerate(((0, b), (2, a), (1, c)))}
    beside = [out[1].copy()]
    for _ in range(12):
        rows = [(slot, [state[slot][0]], state[slot][1]) for slot in (0, 2, 1)]
        out = model.forward_batch(rows)
        beside.append(out[1].copy())
        for i, slot in enumerate((0, 2, 1)):
            state[slot] = [int(np.argmax(out[i])), state[slot][1] + 1]
    assert [int(np.argmax(x)) for x in beside] == [int(np.argmax(x)) for x in alone]
    worst = max(float(np.abs(x - y).max()) for x, y in zip(alone, beside))
    if llm.ops.precision == "bf16" and HAS_AVX512_BF16 and not HAS_AMX_BF16:
        assert worst == 0.0, "bf16 on vdpbf16ps: the matvec and the tiles agree bit for bit at these widths"
    else:
        assert worst <= (BF16_FMA_LOGIT_BOUND if llm.ops.precision == "bf16" else LOGIT_BOUND)


def test_long_rows_differ_in_the_last_bits_only(tmp_path):
    """bf16 with K > 2048 (w2 here: K = 2752): the decode matvec sums a row in one run of 32-lane
    accumulators, the tiles in blocks of 2048 (ops/matmul_tiles.py K_BLOCK_BF16) added in float32:
    measured 1.8e-5 at most on logits of +-3, at one step of 17. Greedy tokens are the same except
    at a near-tie (a top-2 margin within twice the bound), after which the sequences may part."""
    from llama_nb.model.bench import load_transformer
    from llama_nb.model.transformer import Transformer
    from tests.tinymodel import write_tiny_model

    folder = write_tiny_model(tmp_path, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim_multiplier=8.0,
                              tokenizer=None, vocab_size=512, weight_std=None)
    base = load_transformer(folder, ctx=64, max_batch=32)
    model = Transformer(base.args, base.weights, base.ops, ctx=64, max_batch=32, slots=3)
    assert model.args.hidden_dim > 2048
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 512, n).tolist() for n in (9, 5, 7)]
    alone = greedy_logits_alone(model, prompts[1], 16)
    out = model.forward_batch([(slot, p, 0) for slot, p in enumerate(prompts)])
    state = [[int(np.argmax(out[s])), len(prompts[s])] for s in range(3)]
    beside = [out[1].copy()]
    for _ in range(16):
        out = model.forward_batch([(s, [token], pos) for s, (token, pos) in enumerate(state)])
        beside.append(out[1].copy())
        state = [[int(np.argmax(out[s])), state[s][1] + 1] for s in range(3)]
    bound = AMX_LOGIT_BOUND if HAS_AMX_BF16 else LOGIT_BOUND
    for want, got in zip(alone, beside):
        assert float(np.abs(want - got).max()) <= bound
        if int(np.argmax(want)) != int(np.argmax(got)):
            top2 = np.sort(want)[-2:]
            assert top2[1] - top2[0] <= 2 * bound, "a different greedy token without a near-tie"
            break


@pytest.mark.skipif(not HAS_AVX512_BF16, reason="the bit-for-bit claim is the vdpbf16ps kernels' (the CPU lacks them)")
def test_a_batched_decode_step_is_bit_identical_at_long_rows(tmp_path):
    """bf16, K > 2048 (w2: K = 2752): prompts prefilled one by one (the same kernels as alone), then
    decode steps of 3 rows (matvec_bf16dot_rows) give each sequence its logits alone (matvec_bf16dot)
    bit for bit, at every step."""
    from llama_nb.model.bench import load_transformer
    from llama_nb.model.transformer import Transformer
    from llama_nb.ops.matvec import FEW_TOKENS
    from tests.tinymodel import write_tiny_model

    folder = write_tiny_model(tmp_path, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim_multiplier=8.0,
                              tokenizer=None, vocab_size=512, weight_std=None)
    base = load_transformer(folder, ctx=64, max_batch=32)
    model = Transformer(base.args, base.weights, base.ops, ctx=64, max_batch=32, slots=3)
    assert model.args.hidden_dim > 2048 and 3 <= FEW_TOKENS
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 512, n).tolist() for n in (9, 5, 7)]
    alone = [greedy_logits_alone(model, p, 12) for p in prompts]
    state = []
    for slot, p in enumerate(prompts):
        first = model.forward_batch([(slot, p, 0)])[0]
        assert np.array_equal(first, alone[slot][0])
        state.append([int(np.argmax(first)), len(p)])
    for step in range(12):
        out = model.forward_batch([(s, [token], pos) for s, (token, pos) in enumerate(state)])
        for s in range(3):
            assert np.array_equal(out[s], alone[s][step + 1]), f"sequence {s}, step {step}"
        state = [[int(np.argmax(out[s])), state[s][1] + 1] for s in range(3)]


def test_generate_batch_interleaves_and_matches_generate(llm):
    prompts = [ids(llm, t) for t in TEXTS] + [ids(llm, TEXTS[0])]  # 5 prompts, 3 slots: two wait for one
    alone = [[e.token for e in generate(llm.model, llm.tokenizer, p, 10)] for p in prompts]
    stats: list[GenerationStats] = []
    order, got = [], {}
    for event in generate_batch(llm.model, llm.tokenizer, prompts, 10, prefill_chunk=4, stats=stats):
        order.append(event.seq)
        if event.token is not None:
            got.setdefault(event.seq, []).append(event.token)
        else:
            assert event.finished == "max_tokens"
    assert [got[i] for i in range(len(prompts))] == alone
    assert len(set(order[:12])) == 3, "the first three prompts run together (3 slots)"
    assert all(s.stop_reason == "max_tokens" and s.generated_tokens == 10 for s in stats)


def test_a_prompt_that_extends_a_slot_prefills_only_its_new_tokens(llm):
    batch = BatchGenerator(llm.model, llm.tokenizer, prefill_chunk=8)
    first = batch.submit(ids(llm, TEXTS[0]), 10)
    while batch.busy:
        batch.step()
    follow_up = first.prompt + first.stats.tokens + llm.tokenizer.encode(" And", bos=False, eos=False)
    other = batch.submit(ids(llm, TEXTS[1]), 4)  # first in line: it must not take that slot
    again = batch.submit(follow_up, 8)
    while batch.busy:
        batch.step()
    assert other.slot != first.slot and again.slot == first.slot
    assert again.stats.start_pos == len(first.prompt) + 10 - 1  # the last generated token never ran
    assert again.stats.tokens == [e.token for e in generate(llm.model, llm.tokenizer, follow_up, 8)]


def test_prefill_is_chunked_beside_decoding_sequences(llm):
    model = llm.model
    passes = []
    forward_batch = model.forward_batch
    model.forward_batch = lambda rows: passes.append([len(t) for _, t, _ in rows]) or forward_batch(rows)
    try:
        batch = BatchGenerator(model, llm.tokenizer, prefill_chunk=5)
        first = batch.submit(ids(llm, "Amen"), 30)
        while first.prefilling or first.stats.generated_tokens < 2:
            batch.step()
        long_prompt = ids(llm, " ".join(["And the LORD spake unto Moses"] * 4))
        batch.submit(long_prompt, 3)
        passes.clear()
        while batch.busy:
            batch.step()
    finally:
        model.forward_batch = forward_batch
    prefill_passes = [p for p in passes if len(p) == 2]
    assert all(p[1] <= 5 for p in passes if len(p) == 2) and all(p[0] == 1 for p in prefill_passes)
    assert len(prefill_passes) >= len(long_prompt) // 5, "the long prompt ran in chunks beside the decode row"


def test_finished_and_cancelled_sequences_free_their_slots(llm):
    batch = BatchGenerator(llm.model, llm.tokenizer, prefill_chunk=8)
    seqs = [batch.submit(ids(llm, t), 6) for t in TEXTS + TEXTS]  # 8 sequences, 3 slots
    batch.step()
    assert len(batch.running) == 3 and len(batch.waiting) == 5
    batch.cancel(seqs[0])
    batch.cancel(seqs[7])  # still waiting
    finals = {}
    while batch.busy:
        for event in batch.step():
            if event.finished:
                finals[event.seq] = event.finished
    assert finals[seqs[0].id] == "cancelled" and finals[seqs[7].id] == "cancelled"
    assert all(finals[s.id] == "max_tokens" for s in seqs[1:7])
    assert all(owner is None for owner in batch.owner)


def test_forward_batch_refuses_bad_rows(llm):
    model = llm.model
    for rows, what in [([(3, [1], 0)], "slot 3 does not exist"), ([(0, [1], 0), (0, [2], 5)], "appears twice"),
                       ([(0, [1] * 41, 0)], "tokens in all"), ([(1, [1], 128)], "do not fit the context"),
                       ([(1, [10**6], 0)], "token ids"), ([(1, [], 0)], "no tokens")]:
        with pytest.raises(LlamaNbError, match=what):
            model.forward_batch(rows)
