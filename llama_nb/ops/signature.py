"""An op's contract as data: its arguments, their dtypes and dimensions, and what follows from them.

    OpSpec(name, math, args=(Arg("out", OUT, F32, ("T", "N")), Arg("x", IN, F32, ("T", "K")),
                             Arg("w", WEIGHT, None, ("N", "K"))), flops="2 * T * K * N", ...)

One declaration (llama_nb/ops/specs.py) is the single source of everything below, so adding an op
is its declaration, its kernel and its reference:

    spec.check(*args)          the argument check: types, dtypes, dimensions agreeing by name,
                               C order, aliasing, `requires` (run in tests and LLAMA_NB_DEBUG=1)
    spec.signature()           "linear(out f32[T,N], x f32[T,K], w weight[N,K], xq scratch ...)"
                               for `llama-nb ops --doc` and for the check's messages
    spec.make_args(dims, ...)  arguments for given dimension sizes: the test inputs of the case
                               table (seeded values) and the warm-up arrays (ones) alike
    spec.traffic(dims, args)   (bytes moved at least once, flops): the benchmark's GB/s, GFLOP/s
    spec.scratch_shapes(dims)  the scratch buffers a caller preallocates (the model's RunState)

Dimensions are names ("T") or expressions of names ("Dh // 2", "(S + 15) // 16"); `threads` is
bound to Numba's thread count; ("...",) is any shape, the same for every argument declared so.
Roles: OUT (written), INOUT (read and written in place), IN (read),
WEIGHT (a llama_nb.formats.Weight in any format), SCRATCH (room the kernel may use; its contents
mean nothing), PARAM (a Python scalar; a name that also appears in dimension expressions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.formats import Weight, WeightFormat

OUT, INOUT, IN, WEIGHT, SCRATCH, PARAM = "out", "inout", "in", "weight", "scratch", "param"
F32, U16, U8, I64 = np.dtype(np.float32), np.dtype(np.uint16), np.dtype(np.uint8), np.dtype(np.int64)
_SHORT = {F32: "f32", U16: "u16", U8: "u8", I64: "i64"}

Values = Callable[[np.random.Generator, tuple, Mapping[str, int]], Any]


@dataclass(frozen=True)
class Arg:
    """One argument of an op, in call order.

    dtype   numpy dtype for arrays; int or float for PARAM; None for WEIGHT (any format)
    dims    names or expressions, one per dimension ("T", "Dh // 2", 16)
    values  test-input maker (rng, shape, dims) -> array or scalar (None: a default by role)
    """

    name: str
    role: str
    dtype: Any
    dims: tuple = ()
    values: Values | None = None
    doc: str = ""

    def describe(self) -> str:
        kind = "weight" if self.role == WEIGHT else _SHORT.get(self.dtype, getattr(self.dtype, "__name__", str(self.dtype)))
        shape = f"[{','.join(map(str, self.dims))}]" if self.dims else ""
        role = "" if self.role in (IN, PARAM, WEIGHT) else f" ({self.role})"
        return f"{self.name} {kind}{shape}{role}"


def evaluate(expr, dims: Mapping[str, int]) -> int:
    """A dimension: an int, a name, or an expression of names (our own declarations only)."""
    if isinstance(expr, int):
        return expr
    if expr in dims:
        return int(dims[expr])
    return int(eval(expr, {"__builtins__": {}, "min": min, "max": max}, dict(dims)))  # noqa: S307


@dataclass(frozen=True)
class OpSpec:
    """A declared op (see the module docstring). Fields beyond the arguments:

    math           the definition, in words and formulas (for `ops --doc` and the kernel's readers)
    flops          expression of dims: multiply-adds count 2 (0 for memory-bound ops)
    bytes          (dims, args) -> bytes moved at least once; None: every non-scratch array once
    requires       expressions of dims that must hold ("H % KVH == 0")
    may_alias      (out, in) pairs that may be the same array; every other pair must not overlap
    cases          dims of the test and benchmark cases; bench_only: those too slow for every CI run
    block_cases    the cases for weight formats stored in blocks (block > 1: K a multiple of 32 or
                   256), used instead of `cases` for them; cases whose weight does not fit a
                   format's block are left out for it either way (llama_nb/ops/cases.py)
    tol            dict(rtol=, atol=) of any implementation against "reference" (0, 0: bit for bit)
    activations    True when implementations are registered per activation type (linear)
    returns        "int" when the op returns a value (argmax) instead of writing an output
    validate       (args, dims) -> None: checks of values, not shapes (token ids in range)
    warm           small dims the warm-up compiles with (model dims such as Dh override them)
    """

    name: str
    math: str
    args: tuple[Arg, ...]
    flops: str = "0"
    bytes: Callable[[Mapping[str, int], Sequence], int] | None = None
    requires: tuple[str, ...] = ()
    may_alias: tuple[tuple[str, str], ...] = ()
    cases: tuple[Mapping[str, int], ...] = ()
    bench_only: tuple[Mapping[str, int], ...] = ()
    block_cases: tuple[Mapping[str, int], ...] = ()
    tol: Mapping[str, float] = field(default_factory=lambda: dict(rtol=0.0, atol=0.0))
    activations: bool = False
    returns: str | None = None
    validate: Callable[[Sequence, Mapping[str, int]], None] | None = None
    warm: Mapping[str, int] = field(default_factory=dict)

    @property
    def weight_arg(self) -> int | None:
        """Index of the WEIGHT argument (implementations are registered per its format), or None."""
        return next((i for i, a in enumerate(self.args) if a.role == WEIGHT), None)

    @property
    def doc(self) -> str:
        return f"{self.signature()}\n{self.math}"

    def signature(self, skip_scratch: bool = False) -> str:
        shown = [a.describe() for a in self.args if not (skip_scratch and a.role == SCRATCH)]
        return f"{self.name}({', '.join(shown)})" + (f" -> {self.returns}" if self.returns else "")

    # ----------------------------------------------------------------------------- the check

    def bind(self, args: Sequence) -> dict[str, int]:
        """The dimension sizes that `args` give, checking types, dtypes, ranks and agreement."""
        if len(args) != len(self.args):
            raise LlamaNbError(f"{self.name}: takes {len(self.args)} arguments ({self.signature()}), got {len(args)}")
        dims: dict[str, int] = {"threads": _threads()}
        deferred = []
        for arg, value in zip(self.args, args):
            if arg.role == PARAM:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
                    raise LlamaNbError(f"{self.name}: {arg.name} must be a number, got {type(value).__name__}")
                if arg.dtype is int:
                    if not float(value).is_integer():
                        raise LlamaNbError(f"{self.name}: {arg.name} must be an integer, got {value}")
                    dims[arg.name] = int(value)
                continue
            shape = self._shape_of(arg, value)
            if arg.dims == ("...",):  # any shape, the same for every argument declared so
                if dims.setdefault("...", shape) != shape:
                    raise self._mismatch(args, f"{arg.name} has shape {shape}, not {dims['...']}")
                continue
            if len(shape) != len(arg.dims):
                raise LlamaNbError(f"{self.name}: {arg.name} must have {len(arg.dims)} dimensions {list(arg.dims)}, got shape {shape}")
            for expr, size in zip(arg.dims, shape):
                if isinstance(expr, str) and expr.isidentifier() and arg.role != SCRATCH:
                    if dims.setdefault(expr, size) != size:
                        raise self._mismatch(args, f"{expr} is {dims[expr]} elsewhere but {size} in {arg.name}")
                else:
                    deferred.append((arg, expr, size))
        for arg, expr, size in deferred:
            want = evaluate(expr, dims)  # scratch may be larger than needed (sized for the largest call)
            if size < want if arg.role == SCRATCH else size != want:
                raise self._mismatch(args, f"{arg.name}'s dimension {expr} should be {want}, is {size}")
        return dims

    def check(self, *args) -> None:
        """Raise LlamaNbError naming the argument and the shapes seen, unless `args` fit the op."""
        dims = self.bind(args)
        for expr in self.requires:
            if not eval(expr, {"__builtins__": {}}, dict(dims)):  # noqa: S307 - our own declarations
                raise self._mismatch(args, f"need {expr}")
        arrays = [(a, v) for a, v in zip(self.args, args) if a.role in (OUT, INOUT, IN)]
        for i, (a, va) in enumerate(arrays):
            for b, vb in arrays[i + 1 :]:
                if OUT in (a.role, b.role) and (a.name, b.name) not in self.may_alias and np.shares_memory(va, vb):
                    raise LlamaNbError(f"{self.name}: {a.name} must not alias {b.name}")
        if self.validate is not None:
            self.validate(args, dims)

    def _shape_of(self, arg: Arg, value) -> tuple:
        if arg.role == WEIGHT:
            if not isinstance(value, Weight):
                raise LlamaNbError(f"{self.name}: {arg.name} must be a Weight (llama_nb.formats), got {type(value).__name__}")
            return value.shape
        if not isinstance(value, np.ndarray):
            raise LlamaNbError(f"{self.name}: {arg.name} must be a numpy array, got {type(value).__name__}")
        if arg.dtype is not None and value.dtype != arg.dtype:
            raise LlamaNbError(f"{self.name}: {arg.name} must be {arg.dtype}, got {value.dtype} with shape {value.shape}")
        if not value.flags.c_contiguous:
            raise LlamaNbError(f"{self.name}: {arg.name} must be C-contiguous (shape {value.shape}, strides {value.strides})")
        return value.shape

    def _mismatch(self, args: Sequence, what: str) -> LlamaNbError:
        seen = ", ".join(f"{a.name}{list(getattr(v, 'shape', ()))}" if a.role != PARAM else f"{a.name}={v}"
                         for a, v in zip(self.args, args) if a.role != SCRATCH)
        return LlamaNbError(f"{self.name}: {what}; need {self.signature(skip_scratch=True)}, got {seen}")

    # ------------------------------------------------------------------ arguments from dims

    def full_dims(self, dims: Mapping[str, int]) -> dict[str, int]:
        return {"threads": _threads(), **dims}

    def make_args(self, dims: Mapping[str, int], rng: np.random.Generator | None = None,
                  fmt: WeightFormat | None = None, weights_writeable: bool = True) -> tuple:
        """Arguments for these dims: seeded test values with `rng` (outputs NaN-filled, so an
        element a kernel forgets to write is caught), else warm-up arrays of ones. The weight is
        made in `fmt` (default bf16) from values that format can hold."""
        from llama_nb.formats import BF16

        dims = self.full_dims(dims)
        out = []
        for arg in self.args:
            shape = tuple(dims["..."]) if arg.dims == ("...",) else tuple(evaluate(d, dims) for d in arg.dims)
            if arg.role == PARAM:
                out.append(arg.values(rng, (), dims) if arg.values is not None and rng is not None else
                           (dims[arg.name] if arg.name in dims else arg.dtype(1)))
            elif arg.role == WEIGHT:
                out.append(_make_weight(arg, shape, dims, rng, fmt or BF16, weights_writeable))
            elif arg.role == SCRATCH:
                out.append(np.zeros(shape, arg.dtype))
            elif arg.role == OUT:
                out.append(np.full(shape, np.nan if arg.dtype.kind == "f" else 0xDE, arg.dtype))
            elif rng is not None and arg.values is not None:
                out.append(np.ascontiguousarray(arg.values(rng, shape, dims), arg.dtype))
            elif rng is not None:
                out.append(_default_values(rng, shape, arg.dtype))
            else:
                out.append(np.zeros(shape, arg.dtype) if arg.dtype.kind in "iu" else np.ones(shape, arg.dtype))
        return tuple(out)

    def scratch_shapes(self, dims: Mapping[str, int]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """(shape, dtype) of each SCRATCH argument for the largest dims a caller will pass (the
        caller allocates them once)."""
        dims = self.full_dims(dims)
        return {a.name: (tuple(evaluate(d, dims) for d in a.dims), a.dtype) for a in self.args if a.role == SCRATCH}

    def traffic(self, dims: Mapping[str, int], args: Sequence) -> tuple[int, float]:
        """(bytes moved at least once, flops) of one call on `args` with these dims."""
        dims = self.full_dims(dims)
        if self.bytes is not None:
            nbytes = self.bytes(dims, args)
        else:
            nbytes = sum(v.nbytes for a, v in zip(self.args, args) if a.role not in (SCRATCH, PARAM))
        return int(nbytes), float(evaluate(self.flops, dims))


def _threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _default_values(rng: np.random.Generator, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """float32 ~ N(0, 1) with some exact zeros and +-30 outliers (as real residuals have)."""
    from llama_nb.ops.inputs import activations

    if dtype.kind == "f":
        return activations(rng, shape).astype(dtype)
    return rng.integers(0, 1 << (8 * dtype.itemsize), size=shape, dtype=dtype)


def _make_weight(arg: Arg, shape: tuple, dims, rng, fmt: WeightFormat, writeable: bool) -> Weight:
    from llama_nb.ops.inputs import POOL, weight_values

    n, k = shape
    if rng is not None and arg.values is None and n * k > POOL and fmt.block == 1 and not fmt.has_scales:
        # a huge plain weight: a pool of values made in the format, tiled (drawing and converting
        # 500M values would take a minute and 4 GB; a tiled pool costs a memcpy)
        pool = fmt.quantize(weight_values(rng, (1, POOL)))
        weight = Weight(fmt, shape, np.resize(pool.data, fmt.data_shape(n, k)))
    elif rng is not None and arg.values is None and n * k > POOL and not fmt.has_scales:
        # a huge block-format weight: a pool of whole rows quantized once, the rows tiled
        pool = fmt.quantize(weight_values(rng, (max(1, POOL // k), k)))
        weight = Weight(fmt, shape, np.resize(pool.data, fmt.data_shape(n, k)))
    else:
        values = arg.values(rng, shape, dims) if (rng is not None and arg.values is not None) else (
            weight_values(rng, shape) if rng is not None else np.ones(shape, np.float32))
        weight = fmt.quantize(values)
    if not writeable:
        weight.data.flags.writeable = False
    return weight
