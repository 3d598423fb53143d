"""The README's "How to add a kernel, an op or a weight format", done as a user would do it.

The modules of that section (every ```python block whose first line is `# name.py`) and its
entry-point declaration (the ```toml block) are extracted from README.md, so the README cannot
drift from what works. Each walkthrough installs them as a small distribution in tmp_path (a
module plus a .dist-info with an entry point in the `llama_nb.ops` group, as tests/test_registry.py
does) and checks the result in a FRESH interpreter with PYTHONPATH pointing at tmp_path, where
importlib.metadata discovers the plugin; this test process's registry is never touched.

    1. a new implementation of an existing op   silu "mine": --impl, OpSet, CLI run, `ops`, cases
    2. a new op                                  gelu: declaration, derived check, `ops --doc`, cases
    3. a new weight format                       int8_row: kernel vs reference on linear's cases,
                                                 the demo model end to end against bf16 weights,
                                                 and a plugin failing half-way leaving no trace
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import llama_nb

ROOT = Path(llama_nb.__file__).resolve().parent.parent  # the llama_nb the subprocesses import
SECTION_TITLE = "## How to add a kernel, an op or a weight format"
PROMPT = "And it came to pass"  # a demo-model prompt (King James Bible)

# Measured on the demo model, precision float32, int8_row weights vs bf16 weights (see
# test_weight_format_runs_the_demo_model), 2026-12-01: the greedy token agreed at all 16 positions
# of LONG_PROMPT (smallest top-2 margin 0.08) and in all 16 generated tokens; the logits (-14.3 to
# +13.6) moved by 0.235 at most, 0.018 on average. The bound 0.3 leaves room for another CPU's
# summation order (1e-4 at most), not for a coarser format (a 7-bit one, absmax / 63: 0.41).
LONG_PROMPT = "And it came to pass, when the people heard the voice of the trumpet"
INT8_MAX_LOGIT_DIFF = 0.3
INT8_MIN_TOP1_AGREEMENT = 1.0


# ------------------------------------------------------------------------ the README, as code


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION_TITLE + "\n")
    end = text.find("\n## ", start + len(SECTION_TITLE))
    return text[start : end if end != -1 else len(text)]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", readme_section(), flags=re.S | re.M)


def readme_files() -> dict[str, str]:
    """{"my_silu.py": source, ...}: the section's python blocks that name their file."""
    files = {}
    for block in _blocks("python"):
        match = re.match(r"# (\w+\.py)\n", block)
        if match:
            files[match.group(1)] = block
    return files


def readme_entry_points() -> dict[str, str]:
    """{"my_silu": "my_silu", ...}: the section's [project.entry-points."llama_nb.ops"] table."""
    (toml,) = _blocks("toml")
    table = toml.split('[project.entry-points."llama_nb.ops"]\n', 1)[1]
    return dict(re.findall(r'^(\w+) = "([\w.]+)"$', table, flags=re.M))


# --------------------------------------------------------- an installed plugin, a fresh python


def make_distribution(site: Path, dist: str, entry_points: dict[str, str], extra: dict[str, str] | None = None) -> None:
    """Install `dist` into `site`: the README's check_impl.py, the modules its entry points name
    (from the README, or `extra`), and a .dist-info declaring those entry points."""
    files = readme_files()
    sources = {"check_impl.py": files["check_impl.py"]}
    for module in entry_points.values():
        sources[f"{module}.py"] = (extra or {}).get(module) or files[f"{module}.py"]
    for name, source in sources.items():
        (site / name).write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[llama_nb.ops]\n{lines}")
    (info / "RECORD").write_text("")


def run_python(site: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python ARGS` in `site` (so the CLI finds no models-original/ and uses the demo model)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLAMA_NB_NO_PLUGINS", "LLAMA_NB_IMPL", "LLAMA_NB_PLUGIN_DEFAULTS", "LLAMA_NB_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "200"  # `llama-nb ops`: no cell wrapped
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=site,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_script(site: Path, code: str) -> dict:
    """Run `code` (which prints one JSON object last) in a fresh interpreter; that object."""
    proc = run_python(site, "-c", textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_impl(site: Path, *args: str) -> subprocess.CompletedProcess:
    return run_python(site, "check_impl.py", *args)


def test_readme_section_names_its_modules_and_entry_points():
    files, entry_points = readme_files(), readme_entry_points()
    assert {"check_impl.py", "my_silu.py", "my_gelu.py", "my_int8_row.py", "run_int8_row.py"} <= set(files)
    assert entry_points == {"my_silu": "my_silu", "my_gelu": "my_gelu", "my_int8_row": "my_int8_row"}


# ----------------------------------------------- 1. a new implementation of an existing op

WRONG_SILU = """
import numpy as np

from llama_nb.ops.registry import register

@register("silu", "wrong")
def silu_wrong(out, a, b):  # forgets the gate b: check_impl.py must catch it
    out[...] = a / (1 + np.exp(-a))
"""


def test_new_implementation_of_an_existing_op(tmp_path):
    make_distribution(tmp_path, "my-silu", {"my_silu": "my_silu", "silu_wrong": "silu_wrong"},
                      {"silu_wrong": WRONG_SILU})

    checked = check_impl(tmp_path, "silu", "mine")
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "silu[mine] matches the reference on 4 cases" in checked.stdout
    wrong = check_impl(tmp_path, "silu", "wrong")  # the check can fail
    assert wrong.returncode != 0 and "AssertionError" in wrong.stderr and "silu[wrong]" in wrong.stderr

    result = run_script(tmp_path, """
        import json
        import llama_nb
        from llama_nb.demo import demo_model_dir
        from llama_nb.ops.opset import OpSet
        from llama_nb.ops.registry import get

        chosen = OpSet.from_spec("silu=mine")
        ids = {}
        for spec in ("silu=mine", None):
            llm = llama_nb.load_model(demo_model_dir(), impl=spec, ctx=64)
            prompt = llm.tokenizer.encode("%s", bos=True, eos=False)
            ids[str(spec)] = [e.token for e in llm.generate(prompt, max_new_tokens=8)]
        print(json.dumps({"bound": chosen.silu is get("silu", "mine"), "slots": chosen.choice["silu"],
                          "default": OpSet.from_spec().choice["silu"], "ids": ids}))
    """ % PROMPT)
    assert result["bound"] and result["slots"] == "mine" and result["default"] == "numba"
    # silu[mine] is within 1e-5 of the built-in: the greedy continuation is the same
    assert len(result["ids"]["silu=mine"]) == 8 and result["ids"]["silu=mine"] == result["ids"]["None"]

    run = run_python(tmp_path, "-m", "llama_nb", "run", PROMPT, "-n", "8", "--impl", "silu=mine", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert "silu=mine" in report["impl"].split(",")
    assert report["generated_ids"] == result["ids"]["silu=mine"]

    listed = run_python(tmp_path, "-m", "llama_nb", "ops")
    assert listed.returncode == 0, listed.stderr[-3000:]
    (row,) = [line for line in listed.stdout.splitlines() if " mine " in line]
    assert "plugin my_silu (my-silu 0.1)" in row


# ------------------------------------------------------------------------------ 2. a new op


def test_new_op_declared_checked_documented_and_tested(tmp_path):
    make_distribution(tmp_path, "my-gelu", {"my_gelu": "my_gelu"})

    checked = check_impl(tmp_path, "gelu", "numba")
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "gelu[numba] matches the reference on 3 cases" in checked.stdout

    result = run_script(tmp_path, """
        import json, math
        import numpy as np
        from llama_nb.errors import LlamaNbError
        from llama_nb.ops import registry
        from llama_nb.ops.opset import OpSet

        ops = OpSet.from_spec(check=True)
        errors = []
        for out, x in [(np.zeros((3, 17), np.float32), np.zeros((3, 16), np.float32)),
                       (np.zeros((3, 17), np.float32), np.zeros((3, 17))),
                       (np.zeros((3, 17), np.float32), np.zeros((3, 17), np.float32)[:, ::-1])]:
            try:
                ops.gelu(out, x)
                errors.append(None)
            except LlamaNbError as exc:
                errors.append(str(exc))
        x = np.array([[-3.0, -0.5, 0.0, 1.0, 2.5]], np.float32)
        out = np.full_like(x, np.nan)
        ops.gelu(out, x)
        exact = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in x[0].tolist()]
        print(json.dumps({"errors": errors, "out": out[0].tolist(), "exact": exact,
                          "default": registry.default_impl("gelu"), "source": registry.get_impl("gelu").source}))
    """)
    shape, dtype, order = result["errors"]
    assert shape == ("gelu: F is 17 elsewhere but 16 in x; need gelu(out f32[T,F] (out), x f32[T,F]), "
                     "got out[3, 17], x[3, 16]")
    assert dtype == "gelu: x must be float32, got float64 with shape (3, 17)"
    assert order is not None and order.startswith("gelu: x must be C-contiguous")
    section = readme_section()
    for message in (shape, dtype):
        assert "\n" not in message and f"LlamaNbError: {message}\n" in section  # the README shows them
    assert max(abs(g - w) for g, w in zip(result["out"], result["exact"])) < 1e-6
    assert result["default"] == "numba" and result["source"] == "plugin my_gelu (my-gelu 0.1)"

    doc = run_python(tmp_path, "-m", "llama_nb", "ops", "--doc")
    assert doc.returncode == 0, doc.stderr[-3000:]
    quoted = re.findall(r"`(\w+\((?:\w+ \w+\[[\w,]+\](?: \(out\))?(?:, )?)+\))`", readme_section())
    assert {"silu(out f32[T,F] (out), a f32[T,F], b f32[T,F])", "gelu(out f32[T,F] (out), x f32[T,F])"} <= set(quoted)
    for signature in quoted:  # the signatures the README quotes are the declared ones
        assert signature in doc.stdout, signature
    assert "out = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))" in doc.stdout


# ------------------------------------------------------------------------ 3. a new weight format


def test_weight_format_kernel_matches_the_reference_on_the_linear_cases(tmp_path):
    # The linear op's declared tolerance holds for int8_row as for bf16: it was derived for weights
    # of magnitude <= 4 and K <= 14336, and a dequantized int8_row weight is never larger than the
    # values it was quantized from (|q| <= 127 = max|x| / scale), here the same weight_values.
    make_distribution(tmp_path, "my-int8-row", {"my_int8_row": "my_int8_row"})
    checked = check_impl(tmp_path, "linear", "numba", "int8_row", "float32")
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "linear[numba] matches the reference on 15 cases" in checked.stdout


def test_weight_format_runs_the_demo_model(tmp_path):
    make_distribution(tmp_path, "my-int8-row", {"my_int8_row": "my_int8_row"})
    (tmp_path / "run_int8_row.py").write_text(readme_files()["run_int8_row.py"])
    readme_run = run_python(tmp_path, "run_int8_row.py")
    assert readme_run.returncode == 0, readme_run.stderr[-3000:]
    assert len(readme_run.stdout.strip()) > 20  # 16 tokens of text

    result = run_script(tmp_path, """
        import json
        import numpy as np
        import llama_nb
        from llama_nb.demo import demo_model_dir
        from llama_nb.formats import get_format
        from llama_nb.ops import registry
        from llama_nb.ops.opset import OpSet

        registry.load_plugins()  # get_format is no registry lookup: it does not load plugins itself
        # the format: symmetric per-row rounding, error at most half a step (scales[n] / 2)
        fmt = get_format("int8_row")
        x = np.random.default_rng(0).standard_normal((9, 300), dtype=np.float32)
        x *= np.arange(1, 10, dtype=np.float32)[:, None]  # rows of different scales
        x[4] = 0.0
        w = fmt.quantize(x)
        step_error = float((np.abs(w.dequantize() - x) / np.maximum(w.scales, 1e-30)[:, None]).max())
        absmax_code = int(np.abs(w.data).max(axis=1)[np.arange(9) != 4].min())

        models = {f: llama_nb.load_model(demo_model_dir(), weight_format=f, precision="float32", ctx=128)
                  for f in ("int8_row", None)}
        int8, bf16 = models["int8_row"], models[None]
        ids = bf16.tokenizer.encode("%s", bos=True, eos=False)
        logits = {f: np.stack([m.forward(ids[: i + 1], 0) for i in range(len(ids))]) for f, m in models.items()}
        generated = {str(f): [e.token for e in m.generate(ids, max_new_tokens=16)] for f, m in models.items()}
        layer, layer_bf16 = int8.model.weights.layers[0].feed_forward.w2, bf16.model.weights.layers[0].feed_forward.w2
        print(json.dumps({
            "step_error": step_error, "absmax_code": absmax_code, "zero_row": w.data[4].tolist() == [0] * 300,
            "formats": sorted(int8.model.weights.formats()), "w2": repr(layer),
            "repacked": bool(np.array_equal(layer.data, fmt.quantize(layer_bf16.dequantize()).data)),
            "linear": int8.ops.slots[("linear", "int8_row", "float32")],  # the plugin's default=True
            "by_spec": OpSet.from_spec("linear[int8_row]=reference", precision="float32").slots[
                ("linear", "int8_row", "float32")],
            "at_bf16": OpSet.from_spec(precision="bf16").slots[("linear", "int8_row", "bf16")],
            "positions": len(ids),
            "top1": float((logits["int8_row"].argmax(1) == logits[None].argmax(1)).mean()),
            "max_diff": float(np.abs(logits["int8_row"] - logits[None]).max()),
            "generated": generated,
        }))
    """ % LONG_PROMPT)
    assert result["step_error"] <= 0.5 + 1e-5 and result["absmax_code"] == 127 and result["zero_row"]
    assert result["formats"] == ["bf16", "int8_row"]  # the embedding table stays bf16
    assert result["w2"].startswith("Weight(int8_row, [256, ") and result["repacked"]
    assert result["linear"] == "numba" and result["by_spec"] == "reference" and result["at_bf16"] == "reference"
    assert result["positions"] >= 12
    assert result["top1"] >= INT8_MIN_TOP1_AGREEMENT
    assert 0 < result["max_diff"] <= INT8_MAX_LOGIT_DIFF
    assert len(result["generated"]["int8_row"]) == 16 and result["generated"]["int8_row"] == result["generated"]["None"]

    listed = run_python(tmp_path, "-m", "llama_nb", "ops")
    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = listed.stdout.splitlines()
    (start,) = [i for i, line in enumerate(rows) if "linear[int8_row/float32]" in line]
    row = rows[start] + rows[start + 1]  # the slot's two implementations: numba, reference
    assert " numba " in row and "plugin my_int8_row (my-int8-row 0.1)" in row


def test_format_plugin_failing_half_way_leaves_no_trace(tmp_path):
    source = readme_files()["my_int8_row.py"]
    head, registration, tail = re.split(r"(INT8_ROW = register_format\(.*?\)\)\n)", source, flags=re.S)
    failing = {
        "int8_fails_after_format": head + registration + "raise RuntimeError('disk full')\n",
        "int8_fails_at_the_end": source + "\nraise RuntimeError('no AVX2')\n",
    }
    make_distribution(tmp_path, "my-broken-formats", {**{m: m for m in failing}, "my_silu": "my_silu"}, failing)
    result = run_script(tmp_path, """
        import json, warnings
        from llama_nb import formats
        from llama_nb.errors import LlamaNbError
        from llama_nb.ops import registry
        from llama_nb.ops.opset import OpSet
        from llama_nb.demo import demo_model_dir
        import llama_nb

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            slots = registry.slots()
        try:
            llama_nb.load_model(demo_model_dir(), weight_format="int8_row", precision="float32")
            refused = None
        except LlamaNbError as exc:
            refused = str(exc)
        print(json.dumps({"warnings": [str(w.message) for w in caught], "formats": sorted(formats.formats),
                          "int8_slots": [registry.slot_name(s) for s in slots if "int8_row" in s],
                          "mine": OpSet.from_spec("silu=mine").choice["silu"], "refused": refused}))
    """)
    builtin = ["bf16", "f16", "f32", "q4_k", "q6_k", "q8_0"]
    assert result["formats"] == builtin and result["int8_slots"] == []
    assert result["refused"].startswith(f"unknown weight format 'int8_row'; have: {', '.join(builtin)}")
    assert result["mine"] == "mine"  # the good plugin beside them loaded
    warned = "\n".join(result["warnings"])
    assert "plugin 'int8_fails_after_format'" in warned and "RuntimeError: disk full" in warned
    assert "plugin 'int8_fails_at_the_end'" in warned and "RuntimeError: no AVX2" in warned
