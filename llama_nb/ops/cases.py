"""The case table of every op, derived from its declaration: used by tests/test_ops.py,
bench/bench_ops.py and `llama-nb bench ops`.

    ci_cases(op, fmt)              the dims of the cases every CI run tests (spec.cases; for a
                                   block format spec.block_cases, and only cases its block fits)
    bench_cases(op, fmt)           those plus the benchmark-only ones (real 1B shapes, pp128)
    make_inputs(op, case, rng, fmt)  seeded arguments in the op's order (OUT arrays NaN-filled, so
                                   an element a kernel forgets to write is caught; the weight in
                                   format `fmt`)
    call(op, fn, args)             runs fn on fresh copies of the arrays it writes (OUT, INOUT) and
                                   returns them as a tuple, or its return value
    assert_matches(op, got, want, msg)   the comparison, within the op's declared tolerance (bit
                                   for bit where it is zero)
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from llama_nb.formats import WeightFormat
from llama_nb.ops import registry
from llama_nb.ops.signature import INOUT, OUT, evaluate


def _fits(spec, case: Mapping[str, int], fmt: WeightFormat | None) -> bool:
    """Whether the case's weight has a K (its last dimension) that is a multiple of fmt's block."""
    if fmt is None or fmt.block == 1 or spec.weight_arg is None:
        return True
    return evaluate(spec.args[spec.weight_arg].dims[-1], spec.full_dims(case)) % fmt.block == 0


def ci_cases(op: str, fmt: WeightFormat | None = None) -> list[dict]:
    """The op's CI cases for weights in `fmt`: block formats take the op's block_cases when it has
    them; either way only the cases whose weight fits the format's block."""
    spec = registry.spec(op)
    table = spec.block_cases if (fmt is not None and fmt.block > 1 and spec.block_cases) else spec.cases
    return [dict(c) for c in table if _fits(spec, c, fmt)]


def bench_cases(op: str, fmt: WeightFormat | None = None) -> list[dict]:
    spec = registry.spec(op)
    return ci_cases(op, fmt) + [dict(c) for c in spec.bench_only if _fits(spec, c, fmt)]


def make_inputs(op: str, case: Mapping[str, int], rng: np.random.Generator, fmt: WeightFormat | None = None) -> tuple:
    return registry.spec(op).make_args(case, rng, fmt)


def call(op: str, fn: Callable, args: Sequence):
    """fn(*args) with every array it writes copied first; the written copies (a tuple), or fn's
    return value when it has one (argmax). Inputs are shared, never copied (weights can be 1 GB)."""
    spec = registry.spec(op)
    args = [a.copy() if arg.role in (OUT, INOUT) else a for arg, a in zip(spec.args, args)]
    result = fn(*args)
    if result is not None:
        return result
    return tuple(a for arg, a in zip(spec.args, args) if arg.role in (OUT, INOUT))


def assert_matches(op: str, got, want, msg: str = "") -> None:
    """Raise AssertionError unless `got` equals `want` within the op's tolerance."""
    tol = registry.spec(op).tol
    if not isinstance(want, tuple):
        assert got == want, f"{msg}: got {got}, want {want}"
        return
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        where = f"{msg} (output {i})"
        if tol["rtol"] == 0 and tol["atol"] == 0:
            assert g.dtype == w.dtype and g.shape == w.shape, f"{where}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
            bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[g.dtype.itemsize]
            bad = np.flatnonzero(g.view(bits) != w.view(bits))
            assert bad.size == 0, f"{where}: {bad.size} elements differ, first at flat index {bad[0]}"
        else:
            np.testing.assert_allclose(g, w, err_msg=where, **tol)


def format_case(case: Mapping[str, int]) -> str:
    """"T=1,K=64,N=32" (the shape of a case, for tables and test ids)."""
    return ",".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in case.items())
