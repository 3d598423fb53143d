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
from llama_nb.ops.registry import OpSet, get, parse_spec, register

EXPECTED_OPS = {
    "bf16_to_f32", "f32_to_bf16", "embedding", "rmsnorm", "matmul", "matmul_bf16",
    "rope", "softmax", "silu", "attention", "argmax",
}


def test_every_op_is_declared_with_a_reference_and_a_numba_default():
    assert set(registry.ops) == EXPECTED_OPS
    for op in EXPECTED_OPS:
        names = set(registry.impls[op])
        assert {"reference", "numba"} <= names, (op, names)
        assert registry.default_impl(op) == "numba"
        assert registry.ops[op].doc.strip(), op
        assert registry.ops[op].check is not None, op


def test_register_unknown_op_is_loud():
    with pytest.raises(UnknownOpError, match="unknown op 'matmull'.*declared: .*matmul"):
        register("matmull", "mine")


def test_register_duplicate_name_is_loud_unless_clobber():
    with pytest.raises(LlamaNbError, match="already registered"):
        register("matmul", "reference")(lambda out, x, w: None)
    assert get("matmul", "reference").__module__ == "llama_nb.ops.reference"


def test_get_unknown_impl_lists_what_exists():
    with pytest.raises(UnknownImplError, match="no implementation 'tiled' for op 'matmul'; have: .*numba.*reference"):
        get("matmul", "tiled")


def test_parse_spec_per_op_and_bare_name():
    assert parse_spec("matmul=reference, rope=numba") == {"matmul": "reference", "rope": "numba"}
    every = parse_spec("reference")
    assert set(every) == EXPECTED_OPS and set(every.values()) == {"reference"}
    assert parse_spec("") == {} and parse_spec(None) == {}
    with pytest.raises(UnknownOpError):
        parse_spec("matmull=numba")
    with pytest.raises(UnknownImplError):
        parse_spec("matmul=fast")
    with pytest.raises(UnknownImplError, match="no op has an implementation named 'turbo'"):
        parse_spec("turbo")


def test_opset_swaps_implementations_by_spec(monkeypatch):
    ops = OpSet.from_spec("softmax=reference")
    assert ops.choice["softmax"] == "reference" and ops.choice["matmul"] == "numba"
    assert ops.softmax is get("softmax", "reference")
    monkeypatch.setenv("LLAMA_NB_IMPL", "matmul=reference")
    assert OpSet.from_spec().choice["matmul"] == "reference"
    assert OpSet.from_spec("matmul=numba").choice["matmul"] == "numba"  # explicit beats env


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

    @register("argmax", "last_max")
    def argmax_last(x):
        # a deliberately different rule (last index of the max) so the swap is observable
        return int(len(x) - 1 - np.argmax(x[::-1]))
"""


def test_plugin_from_installed_distribution_is_listed_and_swappable(tmp_path):
    _make_distribution(tmp_path, "llama_nb_demo_plugin", "llama_nb_demo_plugin", GOOD_PLUGIN)
    code = textwrap.dedent("""
        import json, numpy as np
        from llama_nb.ops import registry
        from llama_nb.ops.registry import OpSet
        x = np.array([3, 1, 3], dtype=np.float32)
        ops = OpSet.from_spec("argmax=last_max")
        rows = [r for r in registry.table_rows() if r[0] == "argmax"]
        print(json.dumps({"plugin": ops.argmax(x), "default": OpSet.from_spec().argmax(x), "rows": rows}))
    """)
    proc = _run_python(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["plugin"] == 2 and result["default"] == 0
    sources = {name: source for _, name, _, source in result["rows"]}
    assert sources["last_max"] == "plugin llama_nb_demo_plugin (llama_nb_demo_plugin 0.1)"
    assert sources["numba"] == "llama_nb"

    # the same plugin is visible in `llama-nb ops`, and LLAMA_NB_NO_PLUGINS=1 hides it
    cli = "from llama_nb.cli import app; app(['ops'], standalone_mode=False)"
    listed = _run_python(tmp_path, cli)
    assert listed.returncode == 0, listed.stderr
    assert "last_max" in listed.stdout and "llama_nb_demo_plugin" in listed.stdout
    hidden = _run_python(tmp_path, "import os; os.environ['LLAMA_NB_NO_PLUGINS'] = '1'\n" + cli)
    assert hidden.returncode == 0 and "last_max" not in hidden.stdout


def test_broken_plugin_warns_with_its_name_and_nothing_else_breaks(tmp_path):
    _make_distribution(tmp_path, "llama_nb_broken", "llama_nb_broken", "raise ImportError('needs libfoo')\n")
    _make_distribution(tmp_path, "llama_nb_typo", "llama_nb_typo", """
        from llama_nb.ops.registry import register
        register("matmull", "fast")   # a typo in the op name must not pass silently
    """)
    code = textwrap.dedent("""
        import warnings, numpy as np
        from llama_nb.ops.registry import OpSet
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ops = OpSet.from_spec()
        for w in caught:
            print("WARNING", w.message)
        print("argmax", ops.argmax(np.array([0, 5, 1], dtype=np.float32)))
    """)
    proc = _run_python(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'llama_nb_broken'" in proc.stdout and "needs libfoo" in proc.stdout
    assert "plugin 'llama_nb_typo'" in proc.stdout and "unknown op 'matmull'" in proc.stdout
    assert "argmax 1" in proc.stdout
