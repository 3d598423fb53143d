"""The op registry: ops are declared once, implementations are registered against them by name.

    defop("matmul", doc, check)                  declare an op (in llama_nb/ops/specs.py)
    @register("matmul", "numba", default=True)   add an implementation of a declared op
    get("matmul", "reference")                   look one up
    OpSet.from_spec("matmul=reference")          choose one implementation per op, in one place

The model receives an `OpSet` and calls `ops.matmul(out, x, w)`; it never looks names up itself.
Third-party packages add implementations through the entry-point group `llama_nb.ops`: the
entry point names a module whose import runs its `@register` calls. Plugins are loaded lazily, on
the first lookup, and skipped when LLAMA_NB_NO_PLUGINS=1. A plugin that fails to import is reported
with a warning naming it; nothing else breaks.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import types
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Iterable, Mapping

from llama_nb.errors import LlamaNbError, UnknownImplError, UnknownOpError

ENTRY_POINT_GROUP = "llama_nb.ops"
BUILTIN_SOURCE = "llama_nb"


@dataclass(frozen=True)
class OpSpec:
    """A declared op: its name, the math and argument contract (doc), and an argument check.

    `check(*args)` raises `LlamaNbError` naming the argument and the shapes seen. It runs at the op
    boundary in Python (tests, LLAMA_NB_DEBUG=1), never inside a compiled loop.
    """

    name: str
    doc: str
    check: Callable[..., None] | None = None


@dataclass(frozen=True)
class Impl:
    """One registered implementation: the callable, its name, and where it came from."""

    op: str
    name: str
    fn: Callable
    source: str


_OPS: dict[str, OpSpec] = {}
_IMPLS: dict[str, dict[str, Impl]] = {}
_DEFAULTS: dict[str, str] = {}
ops = types.MappingProxyType(_OPS)  # public, read-only views
impls = types.MappingProxyType(_IMPLS)

_plugins_loaded = False
_plugin_lock = threading.RLock()
_current_source = BUILTIN_SOURCE  # set while a plugin module is being imported
plugin_failures: dict[str, str] = {}  # entry-point name -> one-line reason


def defop(name: str, doc: str, check: Callable[..., None] | None = None) -> OpSpec:
    """Declare an op. Declaring the same name twice is an error (two modules disagree)."""
    if name in _OPS:
        raise LlamaNbError(f"op {name!r} is declared twice")
    spec = OpSpec(name, doc, check)
    _OPS[name] = spec
    _IMPLS[name] = {}
    return spec


def register(op: str, name: str, *, default: bool = False, clobber: bool = False):
    """Decorator: register `fn` as implementation `name` of the declared op `op`.

    An undeclared op raises UnknownOpError (a typo in a plugin fails loudly instead of creating a
    new op); a name already taken raises LlamaNbError unless `clobber=True`.
    """
    if op not in _OPS:
        raise UnknownOpError(f"unknown op {op!r}; declared: {', '.join(sorted(_OPS))}")

    def decorate(fn: Callable) -> Callable:
        table = _IMPLS[op]
        if name in table and not clobber:
            raise LlamaNbError(
                f"implementation {name!r} of op {op!r} is already registered "
                f"(by {table[name].source}); pass clobber=True to replace it"
            )
        table[name] = Impl(op, name, fn, _current_source)
        if default or op not in _DEFAULTS:
            _DEFAULTS[op] = name
        return fn

    return decorate


def _ensure_builtins() -> None:
    import llama_nb.ops  # noqa: F401  (importing the package registers every built-in kernel)


def load_plugins() -> None:
    """Import every `llama_nb.ops` entry point once. Failures become warnings, never errors."""
    global _plugins_loaded, _current_source
    with _plugin_lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        _ensure_builtins()
        if os.environ.get("LLAMA_NB_NO_PLUGINS") == "1":
            return
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            where = f"{dist.name} {dist.version}" if dist is not None else ep.value
            _current_source = f"plugin {ep.name} ({where})"
            try:
                target = ep.value.split(":")[0]
                importlib.import_module(target)
            except Exception as exc:  # a broken plugin must not break llama_nb
                reason = f"{type(exc).__name__}: {exc}"
                plugin_failures[ep.name] = reason
                warnings.warn(
                    f"llama_nb plugin {ep.name!r} ({ep.value}) failed to load and is skipped: {reason}",
                    RuntimeWarning,
                    stacklevel=2,
                )
            finally:
                _current_source = BUILTIN_SOURCE


def default_impl(op: str) -> str:
    load_plugins()
    if op not in _OPS:
        raise UnknownOpError(f"unknown op {op!r}; declared: {', '.join(sorted(_OPS))}")
    return _DEFAULTS[op]


def get_impl(op: str, name: str | None = None) -> Impl:
    """The `Impl` registered as `name` for `op` (the op's default when name is None)."""
    load_plugins()
    if op not in _OPS:
        raise UnknownOpError(f"unknown op {op!r}; declared: {', '.join(sorted(_OPS))}")
    table = _IMPLS[op]
    if name is None:
        name = _DEFAULTS[op]
    if name not in table:
        raise UnknownImplError(f"no implementation {name!r} for op {op!r}; have: {', '.join(sorted(table))}")
    return table[name]


def get(op: str, name: str | None = None) -> Callable:
    """The callable registered as `name` for `op` (the op's default when name is None)."""
    return get_impl(op, name).fn


def parse_spec(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse `"matmul=reference,rope=numba"` (or `"reference"`: every op) to {op: impl name}.

    A bare name with no `=` applies to every op that has an implementation of that name, and must
    exist for at least one op. Names are checked against the registry here, so a typo is reported
    before any work starts.
    """
    load_plugins()
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if "=" in part:
                op, _, name = part.partition("=")
                items.append((op.strip(), name.strip()))
            else:
                matching = [op for op, table in _IMPLS.items() if part in table]
                if not matching:
                    raise UnknownImplError(f"--impl {part!r}: no op has an implementation named {part!r}")
                items.extend((op, part) for op in matching)
    choice: dict[str, str] = {}
    for op, name in items:
        get_impl(op, name)  # raises with the list of what exists
        choice[op] = name
    return choice


@dataclass
class OpSet:
    """One implementation chosen per op; the model calls ops as attributes: `ops.matmul(...)`.

    `choice` maps every declared op to the implementation name in use. With `check=True` each call
    first runs the op's declared argument check. With `timed=True` each call adds its wall time to
    `op_seconds[op]` (the per-op breakdown the CLI prints); the overhead is one perf_counter pair.
    """

    choice: dict[str, str]
    check: bool = False
    timed: bool = False
    op_seconds: dict[str, float] = field(default_factory=dict)
    op_calls: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for op, name in self.choice.items():
            object.__setattr__(self, op, self._bind(op, get_impl(op, name).fn))

    @classmethod
    def from_spec(
        cls, spec: str | Mapping[str, str] | None = None, *, check: bool | None = None, timed: bool = False
    ) -> "OpSet":
        """Defaults for every op, overridden by `spec` (falls back to $LLAMA_NB_IMPL when None)."""
        if spec is None:
            spec = os.environ.get("LLAMA_NB_IMPL") or None
        load_plugins()
        choice = {op: _DEFAULTS[op] for op in _OPS if _IMPLS[op]}
        choice.update(parse_spec(spec))
        if check is None:
            check = os.environ.get("LLAMA_NB_DEBUG") == "1"
        return cls(choice, check=check, timed=timed)

    def _bind(self, op: str, fn: Callable) -> Callable:
        spec = _OPS[op]
        if not (self.check or self.timed):
            return fn
        seconds, calls, check = self.op_seconds, self.op_calls, spec.check if self.check else None
        seconds.setdefault(op, 0.0)
        calls.setdefault(op, 0)

        def call(*args, **kwargs):
            if check is not None:
                check(*args, **kwargs)
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            seconds[op] += time.perf_counter() - t0
            calls[op] += 1
            return result

        call.__name__ = f"{op}[{self.choice[op]}]"
        call.__doc__ = spec.doc
        return call

    def reset_timings(self) -> None:
        for op in self.op_seconds:
            self.op_seconds[op] = 0.0
            self.op_calls[op] = 0

    def describe(self) -> str:
        """`"matmul=numba,rope=numba,..."`: a spec that rebuilds this OpSet."""
        return ",".join(f"{op}={name}" for op, name in sorted(self.choice.items()))

    def describe_short(self) -> str:
        """`"defaults"`, or the ops that differ from their default: `"defaults + matmul=reference"`."""
        changed = [f"{op}={name}" for op, name in sorted(self.choice.items()) if _DEFAULTS.get(op) != name]
        return "defaults" + (" + " + ",".join(changed) if changed else "")


def table_rows() -> Iterable[tuple[str, str, bool, str]]:
    """(op, implementation, is_default, source) for every registered implementation, sorted."""
    load_plugins()
    for op in sorted(_OPS):
        for name in sorted(_IMPLS[op]):
            impl = _IMPLS[op][name]
            yield op, name, _DEFAULTS.get(op) == name, impl.source
