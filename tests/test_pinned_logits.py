"""The logits of the tiny test models and the demo model, at both precisions, are bit for bit those
recorded before the weight-format redesign (precision bf16's: since its bf16 KV cache;
tests/pinned_logits.py says how they were made).

On a CPU whose features differ from the recording's (CI runs on the recording's kind), the kernels
may sum in other lanes, so bit equality is not promised there: these two tests are skipped, and
the numerics are left to tests/test_model.py's tolerances."""

import json

import pytest

from tests.pinned_logits import PINS, compute, compute_in_subprocess, cpu_features

PINNED = json.loads(PINS.read_text())
# Features that change no float result of these kernels, so a host that differs from the recording
# only in them still runs the pins: LLVM never emits avx512vp2intersect for them, and avxvnni only
# re-encodes the integer dot products (exact). Checked: both pins held bit for bit on an AMD EPYC
# host without the two (2026-12-02).
NO_EFFECT = {"avx512vp2intersect", "avxvnni"}


def _features(features: str) -> set[str]:
    return {f for f in features.split(",") if f.lstrip("+-") not in NO_EFFECT}


SAME_CPU = _features(PINNED["cpu_features"]) == _features(cpu_features())


def _assert_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    changed = {key: [i for i, (g, w) in enumerate(zip(got[key], want[key])) if g != w] for key in want}
    changed = {key: steps for key, steps in changed.items() if steps}
    assert not changed, f"logits changed (model/precision: pass indices, 0 = prompt): {changed}"


@pytest.mark.skipif(not SAME_CPU, reason="pins are bit-exact only on the CPU features they were recorded on")
def test_logits_are_bit_identical_to_the_pinned_ones(tmp_path):
    _assert_equal(compute(tmp_path), PINNED["logits"])


@pytest.mark.skipif(not SAME_CPU, reason="pins are bit-exact only on the CPU features they were recorded on")
def test_portable_kernels_give_the_pinned_logits_too():
    _assert_equal(compute_in_subprocess({"LLAMA_NB_NO_BF16DOT": "1"}), PINNED["logits_no_bf16dot"])
