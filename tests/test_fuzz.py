"""The mutation fuzzer (tests/fuzzing.py) in CI: a few hundred seeded cases, each loads or is refused.

Two bases: Meta's folder (300 cases) and the same toy model as a Hugging Face folder (150 cases:
safetensors headers, config.json, tokenizer.json, generation_config.json, special files).

A case that loads also runs llama_nb.load_model, one forward pass and three greedy tokens, so
flipped weights (NaN, Inf) must still give valid token ids. Any other exception, a multi-line
message, a payload that ran, or a case over its time limit fails the test with the case number;
`python bench/fuzz.py --seed 2024 --case N` replays it. Longer runs, one subprocess per worker so a
segfault shows as a crashed case: `python bench/fuzz.py --cases 20000`.
"""

from __future__ import annotations

import collections
import random
import time

import pytest

from tests import fuzz_gguf, fuzz_hostile, fuzzing

SEED = 2024
CASES = 300
CASE_SECONDS = 20  # a case takes ~20 ms (the fixture compiled the kernels)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The valid folder's files; loading it once also compiles the kernels outside any case's limit."""
    folder = tmp_path_factory.mktemp("fuzz") / "base"
    files = fuzzing.base_files(folder)
    assert fuzzing.load_and_run(folder).endswith("logits finite")  # else every case is a trivial refusal
    return files


def test_mutations_are_deterministic_and_varied(base, tmp_path):
    runs = [fuzzing.mutate(base, random.Random(f"{SEED}:{case}"), tmp_path / "M") for case in range(60)]
    again = [fuzzing.mutate(base, random.Random(f"{SEED}:{case}"), tmp_path / "M") for case in range(60)]
    assert runs == again
    kinds = collections.Counter(what.split(":")[0] for _, done in runs for what in done)
    assert {"pth", "zip", "pickle", "params.json", "tokenizer.model", "files"} <= set(kinds), kinds
    assert all(files != base for files, _ in runs[:20])


def test_fuzz_cases_load_or_are_refused(base, tmp_path):
    outcomes = collections.Counter()
    mutations = collections.Counter()
    start = time.perf_counter()
    for case in range(CASES):
        with fuzzing.time_limit(CASE_SECONDS):
            result = fuzzing.run_case(base, SEED, case, tmp_path)  # raises FuzzFailure on a bug
        outcomes[result.outcome] += 1
        for what in result.mutations:
            mutations[what.split(":")[0], result.outcome] += 1
    elapsed = time.perf_counter() - start
    # both outcomes are common, and each kind of mutation reached the loader
    assert outcomes["loaded"] > CASES // 10 and outcomes["refused"] > CASES // 2, outcomes
    assert mutations["pickle", "refused"] > 20 and mutations["pth", "loaded"] > 5, mutations
    assert elapsed < 60, f"{CASES} cases took {elapsed:.1f} s"


HF_CASES = 150


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory, base):  # after `base`: the kernels are compiled
    folder = tmp_path_factory.mktemp("fuzz_hf") / "base"
    files = fuzzing.hf_base_files(folder)
    assert fuzzing.warm_up(folder).endswith("logits finite")
    return files


def test_fuzz_hf_folder_cases_load_or_are_refused(hf_base, tmp_path):
    """The Hugging Face folder's mutations (safetensors header, config.json, tokenizer.json, files)."""
    outcomes = collections.Counter()
    mutations = collections.Counter()
    for case in range(HF_CASES):
        with fuzzing.time_limit(CASE_SECONDS):
            result = fuzzing.run_case(hf_base, SEED, case, tmp_path)  # raises FuzzFailure on a bug
        outcomes[result.outcome] += 1
        for what in result.mutations:
            mutations[what.split(":")[0], result.outcome] += 1
    assert outcomes["loaded"] > HF_CASES // 10 and outcomes["refused"] > HF_CASES // 2, outcomes
    kinds = {kind for kind, _ in mutations}
    assert {"safetensors", "config.json", "tokenizer.json", "files"} <= kinds, mutations
    assert mutations["safetensors", "refused"] > 20 and mutations["safetensors", "loaded"] > 3, mutations


# Every hostile mutation of tests/fuzz_hostile.py, by a phrase of its description, and what it must
# end in: well-formed FRAMEs and a grown file may load; everything else is refused.
HOSTILE = {
    "is a FIFO": {"refused"}, "-> /dev/": {"refused"}, "sparse file": {"refused"}, "digits": {"refused"},
    "cut to": {"refused", "loaded"}, "grows by": {"refused", "loaded"},  # a cut inside the central directory's
    "FRAME whole": {"loaded"}, "FRAME per opcode": {"loaded"}, "FRAME too long": {"refused"},  # tail may load
    "FRAME too short": {"refused"}, "FRAME nested": {"refused"}, "behind a FRAME": {"refused"},
    "colliding int keys": {"refused"}, "tensor name": {"refused"},
}


def test_every_hostile_mutation_loads_or_is_refused_as_it_should(base, tmp_path):
    """Each hostile kind, drawn from its own seeds until all appeared, through the fuzzer's contract."""
    entries = fuzzing.zip_entries(base[fuzzing.PTH])
    pkl_name = fuzzing.pickle_name(entries)
    outcomes: dict[str, set] = collections.defaultdict(set)
    for k in range(120):
        rng = random.Random(f"hostile:{k}")
        if k % 2:
            files, what = fuzz_hostile.mutate_files(base, rng)
        else:
            pkl, what = fuzz_hostile.mutate_pickle(dict(entries)[pkl_name], rng)
            files = {**base, fuzzing.PTH: fuzzing.pack_zip([(n, pkl if n == pkl_name else d) for n, d in entries])}
        with fuzzing.time_limit(CASE_SECONDS):
            result = fuzzing.check_case(files, [what], tmp_path / "case")  # raises FuzzFailure on a bug
        kind = next((phrase for phrase in HOSTILE if phrase in what), what)
        outcomes[kind].add(result.outcome)
    assert set(outcomes) == set(HOSTILE), set(outcomes) ^ set(HOSTILE)
    wrong = {kind: seen for kind, seen in outcomes.items() if not seen <= HOSTILE[kind]}
    assert not wrong, wrong


GGUF_CASES = 150


def test_gguf_fuzz_cases_load_or_are_refused(base, tmp_path):
    """The GGUF reader under tests/fuzz_gguf.py's mutations, through the same contract."""
    base_gguf = fuzz_gguf.gguf_base_bytes(tmp_path / "gbase")
    outcomes = collections.Counter()
    kinds = collections.Counter()
    for case in range(GGUF_CASES):
        with fuzzing.time_limit(CASE_SECONDS):
            result = fuzzing.run_gguf_case(base_gguf, SEED, case, tmp_path)  # raises FuzzFailure on a bug
        outcomes[result.outcome] += 1
        for what in result.mutations:
            kinds[what.split()[1], result.outcome] += 1
    assert outcomes["loaded"] > GGUF_CASES // 20 and outcomes["refused"] > GGUF_CASES // 2, outcomes
    assert kinds["bytes", "refused"] and kinds["truncated", "refused"] and kinds["key", "refused"], kinds
