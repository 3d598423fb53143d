"""The op registry: ops are declared once; implementations are registered against them by name.

    defop(OpSpec("linear", ...))                          declare an op (llama_nb/ops/specs.py)
    @register("linear", "numba", format="bf16", act="bf16")  an implementation of a declared op
    get("linear", "reference", format="bf16", act="bf16")    look one up

An implementation fills a slot: (op, format, act). `format` is the weight format it reads, for ops
with a WEIGHT argument (llama_nb/formats.py); `act` the activation type, for ops declared with
`activations=True` (linear: "bf16" or "float32", what --precision names). Other ops have one slot,
(op, None, None). Every slot has a default; the model gets an `OpSet` (llama_nb/ops/opset.py),
which picks one implementation per slot, and never looks names up itself.

Third-party packages add implementations, formats or whole ops through the entry-point group
`llama_nb.ops`: the entry point names a module whose import runs its `register` calls. Plugins
load lazily, on the first lookup, and not at all when LLAMA_NB_NO_PLUGINS=1. A plugin is all or
nothing: if its import fails (an exception, even SystemExit), everything it registered is taken
back and a warning names it. A plugin never changes a built-in default by itself: `default=True`
over a built-in is recorded as a wish, shown by `llama-nb ops`, and granted only when the user
names the plugin in LLAMA_NB_PLUGIN_DEFAULTS (comma-separated entry-point names, or "all");
replacing a built-in implementation (`clobber=True`) is refused for plugins.
"""

from __future__ import annotations

import importlib
import os
import threading
import types
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Iterator, Mapping

from llama_nb import formats
from llama_nb.errors import LlamaNbError, UnknownImplError, UnknownOpError
from llama_nb.ops.signature import OpSpec

ENTRY_POINT_GROUP = "llama_nb.ops"
BUILTIN_SOURCE = "llama_nb"
ACTIVATIONS = ("bf16", "float32")  # the activation types of ops declared with activations=True
Slot = tuple  # (op, format | None, act | None)


@dataclass(frozen=True)
class Impl:
    """One registered implementation.

    switches  dims at which this implementation changes compiled kernel: {"T": (1,), "K": (8192,)}
              means T = 1 and T > 1 take different code, and K <= 8192 and K > 8192; the warm-up
              (llama_nb/ops/jit.py) compiles both sides of each, so no timing includes a compile
    """

    op: str
    name: str
    fn: Callable
    source: str
    format: str | None = None
    act: str | None = None
    switches: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    wants_default: bool = False  # a plugin asked for default=True over a built-in (not granted)

    @property
    def slot(self) -> Slot:
        return (self.op, self.format, self.act)


_OPS: dict[str, OpSpec] = {}
_IMPLS: dict[Slot, dict[str, Impl]] = {}
_DEFAULTS: dict[Slot, str] = {}

_plugins_loaded = False
_lock = threading.RLock()
_current_source = BUILTIN_SOURCE  # set while a plugin module is being imported
_current_plugin = ""  # its entry-point name
plugin_failures: dict[str, str] = {}  # entry-point name -> one-line reason


class _ReadOnly(Mapping):
    """A read-only view of a dict whose values are dicts: the inner ones are read-only too."""

    def __init__(self, table: dict):
        self._table = table

    def __getitem__(self, key):
        value = self._table[key]
        return types.MappingProxyType(value) if isinstance(value, dict) else value

    def __iter__(self):
        return iter(self._table)

    def __len__(self):
        return len(self._table)


ops = types.MappingProxyType(_OPS)  # public, read-only views
impls = _ReadOnly(_IMPLS)  # slot -> {name: Impl}
defaults = types.MappingProxyType(_DEFAULTS)


def slot_name(slot: Slot) -> str:
    """"linear[bf16/bf16]", "embedding[bf16]", "rope"."""
    op, fmt, act = slot
    inside = "/".join(p for p in (fmt, act) if p is not None)
    return f"{op}[{inside}]" if inside else op


def defop(spec: OpSpec) -> OpSpec:
    """Declare an op. Declaring the same name twice is an error (two modules disagree)."""
    with _lock:
        if spec.name in _OPS:
            raise LlamaNbError(f"op {spec.name!r} is declared twice")
        _OPS[spec.name] = spec
    return spec


def register(op: str, name: str, *, format: str | None = None, act: str | None = None, default: bool = False,
             clobber: bool = False, switches: Mapping[str, tuple[int, ...]] | None = None):
    """Decorator: register `fn` as implementation `name` of the declared op `op`, for weight
    `format` and activation type `act` where the op has them.

    Loud on every mistake: an undeclared op (UnknownOpError: a typo in a plugin must not create a
    new op), a format that is missing or not registered, a missing or unknown act, a name already
    taken (unless clobber=True, which plugins may not use on built-ins), a non-callable.
    """
    spec = _OPS.get(op)
    if spec is None:
        raise UnknownOpError(f"unknown op {op!r}; declared: {', '.join(sorted(_OPS))}")
    if (spec.weight_arg is not None) != (format is not None):
        raise LlamaNbError(f"op {op!r} {'takes a weight: give format=' if format is None else 'takes no weight: drop format='}"
                           f"{'' if format is None else repr(format)}")
    if format is not None:
        formats.get_format(format)  # raises naming the known formats
    if spec.activations != (act is not None) or (act is not None and act not in ACTIVATIONS):
        raise LlamaNbError(f"op {op!r}: act must be {' or '.join(ACTIVATIONS) if spec.activations else 'None'}, got {act!r}")
    slot = (op, format, act)

    def decorate(fn: Callable) -> Callable:
        if not callable(fn):
            raise LlamaNbError(f"implementation {name!r} of {slot_name(slot)} is not callable ({type(fn).__name__})")
        with _lock:
            table = _IMPLS.setdefault(slot, {})
            plugin = _current_source != BUILTIN_SOURCE
            if name in table and not clobber:
                raise LlamaNbError(f"implementation {name!r} of {slot_name(slot)} is already registered "
                                   f"(by {table[name].source}); pass clobber=True to replace it")
            if name in table and plugin and table[name].source == BUILTIN_SOURCE:
                raise LlamaNbError(f"a plugin may not replace built-in implementation {name!r} of {slot_name(slot)}; "
                                   f"register it under another name and choose it with --impl")
            builtin_default = slot in _DEFAULTS and table[_DEFAULTS[slot]].source == BUILTIN_SOURCE
            wish = default and plugin and builtin_default and not _plugin_default_granted()
            table[name] = Impl(op, name, fn, _current_source, format, act, dict(switches or {}), wants_default=wish)
            if (default and not wish) or slot not in _DEFAULTS:
                _DEFAULTS[slot] = name
        return fn

    return decorate


def _plugin_default_granted() -> bool:
    """Whether the user let the plugin being imported now set defaults (LLAMA_NB_PLUGIN_DEFAULTS)."""
    granted = {p.strip() for p in os.environ.get("LLAMA_NB_PLUGIN_DEFAULTS", "").split(",") if p.strip()}
    return "all" in granted or _current_plugin in granted


# ------------------------------------------------------------------------------------- plugins


def load_plugins() -> None:
    """Import every `llama_nb.ops` entry point once; each is all or nothing, failures are warnings."""
    global _plugins_loaded, _current_source, _current_plugin
    with _lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        if os.environ.get("LLAMA_NB_NO_PLUGINS") == "1":
            return
        try:
            entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        except Exception as exc:  # noqa: BLE001 - a broken installed distribution's metadata
            plugin_failures["(entry points)"] = f"{type(exc).__name__}: {exc}"
            return
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            where = f"{dist.name} {dist.version}" if dist is not None else ep.value
            saved = _snapshot()
            _current_source, _current_plugin = f"plugin {ep.name} ({where})", ep.name
            try:
                importlib.import_module(ep.value.split(":")[0])
            except KeyboardInterrupt:
                _restore(saved)
                raise
            except BaseException as exc:  # noqa: BLE001 - a broken plugin (even sys.exit()) must not break llama_nb
                _restore(saved)
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                plugin_failures[ep.name] = reason
                warnings.warn(f"llama_nb plugin {ep.name!r} ({ep.value}) failed to load and is skipped: {reason}",
                              RuntimeWarning, stacklevel=2)
            finally:
                _current_source, _current_plugin = BUILTIN_SOURCE, ""


def _snapshot():
    return dict(_OPS), {slot: dict(t) for slot, t in _IMPLS.items()}, dict(_DEFAULTS), formats.snapshot()


def _restore(saved) -> None:
    ops_, impls_, defaults_, formats_ = saved
    _OPS.clear(), _OPS.update(ops_)
    _IMPLS.clear(), _IMPLS.update(impls_)
    _DEFAULTS.clear(), _DEFAULTS.update(defaults_)
    formats.restore(formats_)


# ------------------------------------------------------------------------------------- lookups


def slots(op: str | None = None) -> list[Slot]:
    """Every slot with at least one implementation (of `op`), sorted."""
    load_plugins()
    return sorted((s for s in _IMPLS if op is None or s[0] == op), key=lambda s: tuple(p or "" for p in s))


def spec(op: str) -> OpSpec:
    load_plugins()  # a plugin may declare the op
    try:
        return _OPS[op]
    except KeyError:
        raise UnknownOpError(f"unknown op {op!r}; declared: {', '.join(sorted(_OPS))}") from None


def get_impl(op: str, name: str | None = None, *, format: str | None = None, act: str | None = None) -> Impl:
    """The Impl registered as `name` for the slot (op, format, act); the slot's default when name is None."""
    load_plugins()
    spec(op)
    slot = (op, format, act)
    table = _IMPLS.get(slot)
    if not table:
        have = ", ".join(slot_name(s) for s in slots(op)) or "none"
        raise UnknownImplError(f"no implementation of {slot_name(slot)} is registered; have: {have}")
    name = _DEFAULTS[slot] if name is None else name
    if name not in table:
        raise UnknownImplError(f"no implementation {name!r} of {slot_name(slot)}; have: {', '.join(sorted(table))}")
    return table[name]


def get(op: str, name: str | None = None, *, format: str | None = None, act: str | None = None) -> Callable:
    """The callable of get_impl(...)."""
    return get_impl(op, name, format=format, act=act).fn


def default_impl(op: str, *, format: str | None = None, act: str | None = None) -> str:
    return get_impl(op, format=format, act=act).name


def table_rows() -> Iterator[tuple[str, str, bool, str, str]]:
    """(slot name, implementation, is_default, source, note) for every implementation, sorted."""
    for slot in slots():
        for name in sorted(_IMPLS[slot]):
            impl = _IMPLS[slot][name]
            note = "asks to be the default: set LLAMA_NB_PLUGIN_DEFAULTS to allow" if impl.wants_default else ""
            yield slot_name(slot), name, _DEFAULTS.get(slot) == name, impl.source, note
