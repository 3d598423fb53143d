"""The op registry: declared ops, registration rules, spec parsing, and real entry-point plugins.

Plugins are tested as a user would meet them: a distribution on sys.path whose `.dist-info`
declares an entry point in the `llama_nb.ops` group, discovered by importlib.metadata in a fresh
interpreter (so the registry state of this test process is never polluted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llama_nb.errors import LlamaNbError, UnknownImplError, UnknownOpError
from llama_nb.ops import registry
from llama_nb.ops.opset import OpSet, parse_spec
from llama_nb.ops.registry import get, register

EXPECTED_OPS = {
    "bf16_to_f32", "f32_to_bf16", "dequantize", "embedding", "rmsnorm", "linear",
    "rope", "softmax", "silu", "attention", "attention_bf16kv", "argmax",
}


def test_every_op_is_declared_with_a_reference_and_a_numba_default():
    assert set(registry.ops) == EXPECTED_OPS
    for slot in registry.slots():
        names = set(registry.impls[slot])
        assert {"reference", "numba"} <= names, (slot, names)
        assert registry.defaults[slot] == "numba", slot
    for op, spec in registry.ops.items():
        assert spec.math.strip() and spec.args and spec.cases, op


def test_register_unknown_op_is_loud():
    with pytest.raises(UnknownOpError, match="unknown op 'linaer'.*declared: .*linear"):
        register("linaer", "mine")


def test_register_checks_format_and_activation_type():
    with pytest.raises(LlamaNbError, match="takes a weight: give format="):
        register("linear", "mine", act="float32")
    with pytest.raises(LlamaNbError, match="unknown weight format 'q9'"):
        register("linear", "mine", format="q9", act="float32")
    with pytest.raises(LlamaNbError, match="act must be bf16 or float32"):
        register("linear", "mine", format="bf16")
    with pytest.raises(LlamaNbError, match="takes no weight"):
        register("rope", "mine", format="bf16")
    with pytest.raises(LlamaNbError, match="is not callable"):
        register("rope", "mine")(42)


def test_register_duplicate_name_is_loud_unless_clobber():
    with pytest.raises(LlamaNbError, match="already registered"):
        register("linear", "reference", format="bf16", act="float32")(lambda out, x, w, xq: None)
    assert get("linear", "reference", format="bf16", act="float32").__module__ == "llama_nb.ops.reference"


def test_get_unknown_impl_lists_what_exists():
    with pytest.raises(UnknownImplError, match=r"no implementation 'tiled' of linear\[bf16/bf16\]; have: .*numba.*reference"):
        get("linear", "tiled", format="bf16", act="bf16")
    with pytest.raises(UnknownImplError, match=r"no implementation of linear\[q9/bf16\]"):
        get("linear", format="q9", act="bf16")


def test_read_only_views_are_read_only():
    with pytest.raises(TypeError):
        registry.ops["x"] = None
    with pytest.raises(TypeError):
        registry.impls[("rope", None, None)]["mine"] = None  # the inner tables too
    with pytest.raises(TypeError):
        registry.defaults[("rope", None, None)] = "reference"


def test_parse_spec_per_op_per_format_and_bare_name():
    assert parse_spec("linear=reference, rope=numba, linear[f16]=numba") == [
        ("linear", None, "reference"), ("rope", None, "numba"), ("linear", "f16", "numba")]
    assert parse_spec("reference") == [(None, None, "reference")]
    assert parse_spec("") == [] and parse_spec(None) == []
    with pytest.raises(UnknownOpError):
        parse_spec("linaer=numba")
    with pytest.raises(LlamaNbError, match="write op\\[format\\]=name"):
        parse_spec("linear[bf16=numba")


def test_opset_chooses_per_slot_and_precision(monkeypatch):
    ops = OpSet.from_spec("softmax=reference")
    assert ops.precision == "bf16" and ops.choice["softmax"] == "reference" and ops.choice["linear"] == "numba"
    assert ops.softmax is get("softmax", "reference")
    every = OpSet.from_spec("reference", precision="float32")
    assert set(every.slots.values()) == {"reference"} and all(s[2] in (None, "float32") for s in every.slots)
    one = OpSet.from_spec("linear[f16]=reference")
    assert one.slots[("linear", "f16", "bf16")] == "reference" and one.slots[("linear", "bf16", "bf16")] == "numba"
    monkeypatch.setenv("LLAMA_NB_IMPL", "linear=reference")
    assert OpSet.from_spec().choice["linear"] == "reference"
    assert OpSet.from_spec("linear=numba").choice["linear"] == "numba"  # explicit beats env
    with pytest.raises(UnknownImplError, match="'numba_fma' exists for linear\\[bf16/bf16\\]: another --precision"):
        OpSet.from_spec("linear=numba_fma", precision="float32")
    with pytest.raises(UnknownImplError, match="no implementation of any op by that name"):
        OpSet.from_spec("turbo")
    with pytest.raises(LlamaNbError, match="precision must be one of bf16, float32"):
        OpSet.from_spec(precision="fp8")


def test_opset_dispatches_on_the_weight_format(rng):
    from llama_nb.formats import BF16, F16
    from llama_nb.ops.cases import make_inputs

    ops = OpSet.from_spec(precision="float32")
    out, x, w, xq = make_inputs("linear", dict(T=2, K=32, N=3), rng)
    ops.linear(out, x, w, xq)
    bf16_result = out.copy()
    ops.linear(out, x, F16.quantize(w.dequantize()), xq)  # bf16-exact values: f16 holds them too
    np.testing.assert_allclose(out, bf16_result, rtol=1e-6, atol=1e-6)
    assert w.format is BF16
    narrowed = OpSet({s: n for s, n in ops.slots.items() if s[1] != "f16"}, "float32")
    with pytest.raises(LlamaNbError, match="linear: no implementation for weight format 'f16'"):
        narrowed.linear(out, x, F16.quantize(w.dequantize()), xq)


def test_opset_check_and_timing_wrappers():
    ops = OpSet.from_spec("reference", check=True, timed=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = np.empty_like(x)
    ops.softmax(out, x)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    assert ops.op_calls["softmax"] == 1 and ops.op_seconds["softmax"] > 0
    with pytest.raises(LlamaNbError, match="softmax: x must be float32, got float64"):
        ops.softmax(out, x.astype(np.float64))
    ops.reset_timings()
    assert ops.op_calls["softmax"] == 0


# --- real plugins, discovered through importlib.metadata in a fresh interpreter -------------------

def _make_distribution(site: Path, dist: str, module: str, source: str) -> None:
    """A minimal installed distribution: a module plus a .dist-info with an entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[llama_nb.ops]\n{module} = {module}\n")
    (info / "RECORD").write_text("")


def _run_python(site: Path, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_NB_NO_PLUGINS", "LLAMA_NB_IMPL")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


GOOD_PLUGIN = """
    import numpy as np
    from llama_nb.ops.registry import register

    @register("argmax", "last_max", default=True)   # a wish: not granted over the built-in
    def argmax_last(x):
        # a deliberately different rule (last index of the max) so the swap is observable
        return int(len(x) - 1 - np.argmax(x[::-1]))
"""


def test_plugin_from_installed_distribution_is_listed_and_swappable(tmp_path):
    _make_distribution(tmp_path, "llama_nb_demo_plugin", "llama_nb_demo_plugin", GOOD_PLUGIN)
    code = textwrap.dedent("""
        import json, numpy as np
        from llama_nb.ops import registry
        from llama_nb.ops.opset import OpSet
        x = np.array([3, 1, 3], dtype=np.float32)
        ops = OpSet.from_spec("argmax=last_max")
        rows = [r for r in registry.table_rows() if r[0] == "argmax"]
        print(json.dumps({"plugin": ops.argmax(x), "default": OpSet.from_spec().argmax(x), "rows": rows}))
    """)
    proc = _run_python(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["plugin"] == 2 and result["default"] == 0
    sources = {name: source for _, name, _, source, _ in result["rows"]}
    assert sources["last_max"] == "plugin llama_nb_demo_plugin (llama_nb_demo_plugin 0.1)"
    assert sources["numba"] == "llama_nb"
    notes = {name: (default, note) for _, name, default, _, note in result["rows"]}
    assert notes["numba"][0] and not notes["last_max"][0] and "LLAMA_NB_PLUGIN_DEFAULTS" in notes["last_max"][1]

    # the same plugin is visible in `llama-nb ops`, and LLAMA_NB_NO_PLUGINS=1 hides it
    cli = "from llama_nb.cli import app; app(['ops'], standalone_mode=False)"
    listed = _run_python(tmp_path, cli)
    assert listed.returncode == 0, listed.stderr
    assert "last_max" in listed.stdout and "llama_nb_demo_plugin" in listed.stdout
    assert "asks to be the default" in listed.stdout
    hidden = _run_python(tmp_path, "import os; os.environ['LLAMA_NB_NO_PLUGINS'] = '1'\n" + cli)
    assert hidden.returncode == 0 and "last_max" not in hidden.stdout
    # the user grants the wish: only then does the plugin become the default
    granted = _run_python(tmp_path, "import os; os.environ['LLAMA_NB_PLUGIN_DEFAULTS'] = 'llama_nb_demo_plugin'\n"
                          + "import numpy as np\nfrom llama_nb.ops.opset import OpSet\n"
                          + "print(OpSet.from_spec().argmax(np.array([3, 1, 3], dtype=np.float32)))")
    assert granted.returncode == 0 and granted.stdout.split()[-1] == "2", granted.stderr


def test_broken_plugin_warns_with_its_name_and_nothing_else_breaks(tmp_path):
    _make_distribution(tmp_path, "llama_nb_broken", "llama_nb_broken", "raise ImportError('needs libfoo')\n")
    _make_distribution(tmp_path, "llama_nb_typo", "llama_nb_typo", """
        from llama_nb.ops.registry import register
        register("matmull", "fast")   # a typo in the op name must not pass silently
    """)
    _make_distribution(tmp_path, "llama_nb_exits", "llama_nb_exits", "import sys\nsys.exit(3)\n")
    _make_distribution(tmp_path, "llama_nb_half", "llama_nb_half", """
        from llama_nb.ops.registry import register
        register("argmax", "half_first")(lambda x: 0)
        register("rope", "numba", clobber=True)(lambda *a: None)   # replacing a built-in: refused
    """)
    code = textwrap.dedent("""
        import warnings, numpy as np
        from llama_nb.ops.opset import OpSet
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ops = OpSet.from_spec()
        for w in caught:
            print("WARNING", w.message)
        print("argmax", ops.argmax(np.array([0, 5, 1], dtype=np.float32)))
        from llama_nb.ops import registry
        print("half_first", "half_first" in registry.impls[("argmax", None, None)])
    """)
    proc = _run_python(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'llama_nb_broken'" in proc.stdout and "needs libfoo" in proc.stdout
    assert "plugin 'llama_nb_typo'" in proc.stdout and "unknown op 'matmull'" in proc.stdout
    assert "plugin 'llama_nb_exits'" in proc.stdout and "SystemExit: 3" in proc.stdout  # no exit
    assert "plugin 'llama_nb_half'" in proc.stdout and "may not replace built-in" in proc.stdout
    assert "argmax 1" in proc.stdout
    assert "half_first False" in proc.stdout  # all or nothing: its first registration was taken back


def test_a_plugin_kernel_that_raises_is_one_line_naming_it(tmp_path):
    # Registered, chosen by the user, and broken when called: the warm-up (which calls every chosen
    # implementation before any token) reports it by name in one LlamaNbError, no traceback.
    _make_distribution(tmp_path, "llama_nb_raises", "llama_nb_raises", """
        from llama_nb.ops.registry import register

        @register("silu", "broken")
        def silu_broken(out, a, b):
            raise ZeroDivisionError("oops")
    """)
    code = textwrap.dedent("""
        import llama_nb
        from llama_nb.errors import LlamaNbError
        try:
            llama_nb.load_model(impl="silu=broken").compile()
        except LlamaNbError as exc:
            print("ERROR", exc)
    """)
    proc = _run_python(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR implementation 'broken' of silu (plugin llama_nb_raises" in proc.stdout
    assert "ZeroDivisionError: oops" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
