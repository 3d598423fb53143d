"""The CLI end to end on a tiny model folder: run (plain and --json), menu with scripted input,
and the one-line errors a user sees (through the real entry point, in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pathlib import Path
from typer.testing import CliRunner

import llama_nb
import llama_nb.demo
from llama_nb.cli import app
from tests.tinymodel import write_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("cli"), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, seed=3)


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


def cli(*args, input=None):
    """The real console entry point in a fresh interpreter: what a user's shell sees."""
    return subprocess.run([sys.executable, "-m", "llama_nb", *map(str, args)], input=input,
                          capture_output=True, text=True, timeout=600)


def test_run_json_is_one_object_matching_the_library(folder):
    result = invoke("run", "Once upon a time", "--model", folder, "--max-tokens", 6, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but the object on stdout
    llm = llama_nb.load_model(folder, ctx=64)
    ids = llm.tokenizer.encode("Once upon a time", bos=True, eos=False)
    want = [e.token for e in llm.generate(ids, 6)]
    assert data["prompt_ids"] == ids and data["prompt_ids"][0] == 128000
    assert data["generated_ids"] == want
    assert data["text"] == llm.tokenizer.decode(want)
    assert data["timings"]["prefill_tokens_per_second"] > 0
    assert set(data["timings"]["op_seconds"]) >= {"linear", "attention", "rmsnorm", "rope", "silu"}


def test_run_chat_uses_metas_template(folder):
    result = invoke("run", "Hi there", "--model", folder, "--system", "Be brief", "--max-tokens", 2, "--json")
    assert result.exit_code == 0, result.output
    ids = json.loads(result.stdout)["prompt_ids"]
    llm = llama_nb.load_model(folder, ctx=64)
    assert ids == llm.encode_prompt("Hi there", system="Be brief")
    assert ids.count(128000) == 1
    assert llm.tokenizer.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_run_plain_streams_text_then_summary(folder):
    result = invoke("run", "Once upon a time", "--model", folder, "--max-tokens", 5, "--impl", "linear=reference")
    assert result.exit_code == 0, result.output
    assert "prefill:" in result.stderr and "decode:" in result.stderr and "stopped by" in result.stderr
    assert "precision: bf16" in result.stderr
    data = json.loads(invoke("run", "Once upon a time", "--model", folder, "--max-tokens", 5, "--json").stdout)
    assert result.stdout == data["text"] + "\n" and data["precision"] == "bf16"


def test_run_with_float32_precision(folder):
    result = invoke("run", "Once upon a time", "--model", folder, "--max-tokens", 5, "--precision", "float32",
                    "--impl", "linear=reference", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["precision"] == "float32" and "linear[bf16]=reference" in data["impl"] and data["generated_ids"]


def test_run_caps_max_tokens_to_the_context(folder):
    result = invoke("run", "Once upon a time", "--model", folder, "--max-tokens", 500, "--ctx", 16, "--json")
    data = json.loads(result.stdout)
    assert any("capped to 11" in note for note in data["notes"])
    assert len(data["prompt_ids"]) + len(data["generated_ids"]) <= 16


def test_menu_scripted_session(folder):
    script = "\n".join(["9", "abc", "0", "1", "7", "Once upon a time", "8", "", "Say hi", "q"]) + "\n"
    result = invoke("menu", "--model", folder, "--max-tokens", 3, "--plain", input=script)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("Select from the predefined prompts") == 7  # back to the menu after each answer
    assert "Not a valid choice: 9" in out and "Not a valid choice: abc" in out
    assert "Model metadata was printed" in out and "tok_embeddings.weight" in out
    assert "You are Einstein" in out and "What is the flag of Turkey?" in out
    assert out.rstrip().endswith("bye")


def test_menu_end_of_input_leaves_cleanly(folder):
    result = invoke("menu", "--model", folder, input="")
    assert result.exit_code == 0 and "bye" in result.output


@pytest.mark.parametrize("args, message, code", [
    (["run", "hi", "--model", "/no/such/folder"], "--model /no/such/folder: no such folder", 1),
    (["run", "hi", "--temperature", "-1"], "--temperature must be a finite number >= 0", 2),
    (["run", "hi", "--top-p", "2", "--temperature", "1"], "--top-p must be in (0, 1]", 2),
    (["run", "hi", "--impl", "linear=turbo"], "--impl 'turbo': no implementation of linear by that name at precision bf16", 2),
    (["run", "hi", "--impl", "linear=numba_fma", "--precision", "float32"], "another --precision?", 2),
    (["run", "hi", "--threads", "999"], "--threads 999", 2),
])
def test_user_errors_are_one_line(args, message, code, folder):
    """A bad file or folder is an error (1); a bad option value a usage error (2): one line each."""
    if "--model" not in args:
        args += ["--model", str(folder)]
    proc = cli(*args)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([l for l in proc.stderr.splitlines() if l.strip()]) <= 2  # the error + the debug hint


def test_unknown_precision_is_a_usage_error(folder):
    proc = cli("run", "hi", "--model", folder, "--precision", "fp16")
    assert proc.returncode == 2 and "must be bf16 or float32, got 'fp16'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_model_uses_the_demo_and_a_bad_model_explains_how_to_get_metas_files(tmp_path):
    # cwd = an empty folder, HOME without ~/.llama: the built-in demo model is used, said in one line
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_NB_MODEL"} | {"HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "run", "hi", "--max-tokens", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "built-in demo model" in line]
    assert len(notes) == 1 and "no --model, no $LLAMA_NB_MODEL and no Llama folder in ./models-original/" in notes[0]
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "run", "hi", "--max-tokens", "2", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert "README" in notes[0]
    assert json.loads(proc.stdout)["model"] == str(llama_nb.demo.demo_model_dir())
    # an explicit --model that does not exist is still an error, with the way to get Meta's files
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "run", "hi", "--model", "models-original/nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "--model models-original/nope: no such folder" in proc.stderr and "download" in proc.stderr
    assert "demo" not in proc.stderr


def test_ops_lists_every_op():
    result = invoke("ops")
    assert result.exit_code == 0
    for op in ("linear[bf16/bf16]", "linear[bf16/float32]", "rmsnorm", "rope", "attention", "embedding[bf16]",
               "softmax", "silu", "argmax"):
        assert op in result.stdout

# `bench model` is tested in tests/test_bench_cli.py


def test_a_truncated_gguf_file_as_model_says_what_is_wrong(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    proc = cli("run", "hi", "--model", gguf)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "model.gguf: file ends inside the tensor count" in proc.stderr and "truncated?" in proc.stderr


def test_default_model_order_is_flag_env_local_then_llama_checkpoints(folder, tmp_path, monkeypatch, capsys):
    import shutil

    from llama_nb.cli._options import resolve_model_dir
    from llama_nb.errors import LlamaNbError

    home = tmp_path / "home"
    checkpoints = home / ".llama" / "checkpoints"
    shutil.copytree(folder, checkpoints / "Llama3.2-1B")
    shutil.copytree(folder, checkpoints / "Llama3.1-8B-Instruct")
    (checkpoints / "notes").mkdir()  # not a model: skipped
    work = tmp_path / "work"
    (work / "models-original").mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LLAMA_NB_MODEL", raising=False)

    assert resolve_model_dir(None) == (checkpoints / "Llama3.1-8B-Instruct").expanduser()  # the 8B-Instruct first
    assert f"no --model: using {checkpoints / 'Llama3.1-8B-Instruct'}" in capsys.readouterr().err
    shutil.copytree(folder, work / "models-original" / "Meta-Llama-3.2-3B")
    assert resolve_model_dir(None) == Path("models-original") / "Meta-Llama-3.2-3B"
    monkeypatch.setenv("LLAMA_NB_MODEL", str(folder))
    assert resolve_model_dir(None) == folder and f"using $LLAMA_NB_MODEL={folder}" in capsys.readouterr().err
    assert resolve_model_dir(checkpoints / "Llama3.2-1B") == checkpoints / "Llama3.2-1B"  # --model wins, unsaid
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LLAMA_NB_MODEL", str(tmp_path / "gone"))
    with pytest.raises(LlamaNbError, match=r"\$LLAMA_NB_MODEL .*gone: no such folder"):
        resolve_model_dir(None)
    monkeypatch.delenv("LLAMA_NB_MODEL")
    resolve_model_dir(None, quiet=True)
    assert capsys.readouterr().err == ""  # --quiet: nothing said


def test_load_model_without_a_path_is_the_demo():
    llm = llama_nb.load_model(ctx=32)
    assert llm.folder == llama_nb.demo.demo_model_dir() and llm.args.n_layers == 6


def test_prompt_from_stdin_and_from_a_file(folder, tmp_path):
    want = json.loads(cli("run", "Once upon a time", "--model", folder, "-n", 4, "--json").stdout)["generated_ids"]
    piped = subprocess.run([sys.executable, "-m", "llama_nb", "run", "-", "--model", str(folder), "-n", "4", "--json"],
                           input="Once upon a time", capture_output=True, text=True, timeout=300)
    assert json.loads(piped.stdout)["generated_ids"] == want
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    assert json.loads(cli("run", "--file", prompt, "--model", folder, "-n", 4, "--json").stdout)["generated_ids"] == want
    both = cli("run", "hi", "--file", prompt, "--model", folder)
    assert both.returncode == 2 and "not both" in both.stderr
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    bad = cli("run", "--file", tmp_path / "bad.txt", "--model", folder)
    assert bad.returncode == 1 and "bad.txt: cannot read it as UTF-8 text" in bad.stderr


def test_quiet_prints_only_the_text_and_verbose_adds_the_tables(folder):
    quiet = cli("run", "Once upon a time", "--model", folder, "-n", 4, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip()
    verbose = cli("run", "Once upon a time", "--model", folder, "-n", 4, "--verbose")
    assert verbose.stdout == quiet.stdout
    assert "time per layer, ms (mean of the 3 decode passes)" in verbose.stderr and "time per op" in verbose.stderr
    assert "summary" in verbose.stderr


def test_help_shows_flags_without_a_type():
    for command in (["run"], ["chat"], ["menu"], ["bench", "model"], []):
        result = cli(*command, "--help")
        assert result.returncode == 0 and "<bool>" not in result.stdout, command


def test_menu_end_of_input_at_a_sub_prompt_returns_to_the_menu_and_set_changes_sampling(folder):
    result = invoke("menu", "--model", folder, "--max-tokens", 3, "--plain",
                    input="/set temperature 0.5\n/set top_p 7\n7\n")  # then end of input at "Your prompt:"
    assert result.exit_code == 0, result.output
    out = result.output
    assert "temperature=0.5" in out and "top-p must be in (0, 1]" in out
    assert out.count("Select from the predefined prompts") == 4  # after each /set, and after the prompt ended
    assert out.rstrip().endswith("bye")
