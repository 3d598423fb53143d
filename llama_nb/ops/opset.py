"""OpSet: one implementation chosen per slot, in one place; the model calls ops as attributes.

    ops = OpSet.from_spec("linear=reference,rope=numba", precision="bf16")
    ops.linear(out, x, w, xq)      # dispatched on w.format to the implementation chosen for it
    ops.rope(x, cos, sin, start_pos)

A spec names implementations per op (`linear=numba_fma`: every weight format that has one by that
name), per op and format (`linear[f16]=reference`), or for every op at once (`reference`). The
precision is the activation type of the ops declared with activations (linear): "bf16" (the
default) or "float32"; it picks which slots the spec's names are looked up in, so
`--precision float32 --impl linear=numba_bf16dot` is refused with what exists instead. Names are
checked here, before any work starts. Importing this module registers every built-in kernel.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping

from llama_nb.errors import LlamaNbError, UnknownImplError
from llama_nb.ops import builtins  # noqa: F401  (declares every op, registers every built-in kernel)
from llama_nb.ops import registry
from llama_nb.ops.registry import ACTIVATIONS, Slot, slot_name

DEFAULT_PRECISION = "bf16"
PRECISIONS = ACTIVATIONS


def parse_spec(spec: str | Mapping[str, str] | None) -> list[tuple[str | None, str | None, str]]:
    """`"linear=reference, linear[f16]=numba, softmax=numba"` or `"reference"` -> [(op, format, name)]
    (op None: a bare name, for every op that has it)."""
    if spec is None:
        return []
    items = list(spec.items()) if isinstance(spec, Mapping) else [
        tuple(p.split("=", 1)) if "=" in p else (None, p) for p in (q.strip() for q in spec.split(",")) if p]
    out = []
    for key, name in items:
        name = name.strip()
        if key is None:
            out.append((None, None, name))
            continue
        key = key.strip()
        op, _, fmt = key.partition("[")
        if fmt and not fmt.endswith("]"):
            raise LlamaNbError(f"--impl {key}={name}: write op[format]=name, e.g. linear[bf16]=numba")
        registry.spec(op)  # an unknown op: the list of declared ones
        out.append((op, fmt[:-1] or None, name))
    return out


def _dispatch(op: str, index: int, by_format: dict[str, Callable]) -> Callable:
    """One entry point for every weight format: the implementation of `args[index].format`."""

    class _ByFormat(dict):
        def __missing__(self, fmt):
            raise LlamaNbError(f"{op}: no implementation for weight format {fmt!r} (have: {', '.join(sorted(self))}); "
                               f"see `llama-nb ops`")

    table = _ByFormat(by_format)

    def call(*args):
        return table[args[index].format.name](*args)

    return call


class OpSet:
    """The chosen implementations (`slots`: slot -> name) bound as attributes, one per op.

    With `check=True` each call first runs the op's declared argument check. With `timed=True`
    each call adds its wall time to `op_seconds[op]` and counts `op_calls[op]` (the per-op
    breakdown the CLI prints; the overhead is one perf_counter pair).
    """

    def __init__(self, slots: Mapping[Slot, str], precision: str = DEFAULT_PRECISION, *, check: bool = False,
                 timed: bool = False):
        if precision not in PRECISIONS:
            raise LlamaNbError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.slots, self.precision, self.check, self.timed = dict(slots), precision, check, timed
        self.op_seconds: dict[str, float] = {}
        self.op_calls: dict[str, int] = {}
        for op, spec in registry.ops.items():
            chosen = {slot: registry.get_impl(slot[0], name, format=slot[1], act=slot[2])
                      for slot, name in self.slots.items() if slot[0] == op}
            if not chosen:
                continue
            if spec.weight_arg is None:
                (fn,) = (impl.fn for impl in chosen.values())
            else:
                fn = _dispatch(op, spec.weight_arg, {slot[1]: impl.fn for slot, impl in chosen.items()})
            setattr(self, op, self._bind(op, fn))

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, str] | None = None, *, precision: str | None = None,
                  check: bool | None = None, timed: bool = False) -> "OpSet":
        """Defaults for every slot of this precision, overridden by `spec` (None: $LLAMA_NB_IMPL)."""
        if spec is None:
            spec = os.environ.get("LLAMA_NB_IMPL") or None
        precision = DEFAULT_PRECISION if precision is None else precision
        if precision not in PRECISIONS:
            raise LlamaNbError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        chosen = {slot: registry.defaults[slot] for slot in registry.slots() if slot[2] in (None, precision)}
        for op, fmt, name in parse_spec(spec):
            targets = [s for s in chosen if (op is None or s[0] == op) and (fmt is None or s[1] == fmt)]
            matching = [s for s in targets if name in registry.impls[s]]
            if not matching:
                raise UnknownImplError(_no_such(op, fmt, name, targets, precision))
            chosen.update((slot, name) for slot in matching)
        if check is None:
            check = os.environ.get("LLAMA_NB_DEBUG") == "1"
        return cls(chosen, precision, check=check, timed=timed)

    def _bind(self, op: str, fn: Callable) -> Callable:
        if not (self.check or self.timed):
            return fn
        spec = registry.ops[op]
        seconds, calls, check = self.op_seconds, self.op_calls, spec.check if self.check else None
        seconds.setdefault(op, 0.0)
        calls.setdefault(op, 0)

        def call(*args):
            if check is not None:
                check(*args)
            t0 = time.perf_counter()
            result = fn(*args)
            seconds[op] += time.perf_counter() - t0
            calls[op] += 1
            return result

        call.__name__ = f"{op}[{self.choice.get(op, '')}]"
        call.__doc__ = spec.doc
        return call

    def reset_timings(self) -> None:
        for op in self.op_seconds:
            self.op_seconds[op] = 0.0
            self.op_calls[op] = 0

    @property
    def choice(self) -> dict[str, str]:
        """op -> the implementation's name (names per format, "bf16:numba f16:reference", when they differ)."""
        by_op: dict[str, dict[str | None, str]] = {}
        for (op, fmt, _), name in sorted(self.slots.items(), key=lambda kv: tuple(p or "" for p in kv[0])):
            by_op.setdefault(op, {})[fmt] = name
        return {op: next(iter(names.values())) if len(set(names.values())) == 1
                else " ".join(f"{fmt}:{name}" for fmt, name in names.items()) for op, names in by_op.items()}

    def describe(self) -> str:
        """`"argmax=numba,...,linear[bf16]=numba,..."`: a spec that rebuilds this OpSet (with its precision)."""
        keys = {slot: f"{slot[0]}[{slot[1]}]" if slot[1] is not None else slot[0] for slot in self.slots}
        return ",".join(f"{keys[slot]}={name}" for slot, name in sorted(self.slots.items(), key=lambda kv: keys[kv[0]]))

    def describe_short(self) -> str:
        """`"defaults"`, or the slots that differ from their default: `"defaults + linear[bf16]=reference"`."""
        changed = [f"{slot_name(slot[:2] + (None,))}={name}" for slot, name in sorted(
            self.slots.items(), key=lambda kv: tuple(p or "" for p in kv[0])) if registry.defaults.get(slot) != name]
        return "defaults" + (" + " + ",".join(changed) if changed else "")


def _no_such(op, fmt, name, targets, precision) -> str:
    where = "any op" if op is None else slot_name((op, fmt, None))
    have = sorted({n for s in targets for n in registry.impls[s]})
    elsewhere = [slot_name(s) for s in registry.slots(op) if s not in targets and name in registry.impls[s]]
    hint = f" ({name!r} exists for {', '.join(elsewhere)}: another --precision?)" if elsewhere else ""
    return (f"--impl {name!r}: no implementation of {where} by that name at precision {precision}{hint}; "
            f"have: {', '.join(have) or 'none'}")

