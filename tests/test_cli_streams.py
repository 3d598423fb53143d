"""Issue 13's CLI side: every command on a full disk, closed or broken stdout/stderr, a non-UTF-8
locale, hostile environment variables and sampling values, and Ctrl-C at any moment. Each case
runs the real entry point in a subprocess; the rule is one line said (where anything can be said)
and an exit code that means what it says: 0 ok, 1 error, 2 usage, 130 interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llama_nb.demo import demo_model_dir
from tests.ptyrun import ROOT

DEMO = str(demo_model_dir())
COMMANDS = {  # every command, with the input it reads
    "run": (["run", "In the beginning", "--model", DEMO, "-n", "8"], None),
    "run --json": (["run", "In the beginning", "--model", DEMO, "-n", "8", "--json"], None),
    "chat": (["chat", "--model", DEMO, "-n", "4"], "Hello\n/bye\n"),
    "menu": (["menu", "--model", DEMO, "-n", "4"], "1\nq\n"),
    "info": (["info", "--model", DEMO, "--all"], None),
    "tokenize": (["tokenize", "Hello 🦙 world", "--model", DEMO], None),
    "ops": (["ops"], None),
    "help": (["run", "--help"], None),
}


def llama_nb(args, *, input=None, env=None, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "llama_nb", *args], input=input, capture_output="stdout" not in kw,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}, **kw)


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_full_disk_is_one_line_and_exit_1(name):
    args, stdin = COMMANDS[name]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "llama_nb", *args], input=stdin, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    no_traceback(proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: cannot write to stdout: No space left on device"], proc.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_reader_that_left_is_a_quiet_exit_0(name):
    args, stdin = COMMANDS[name]
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "llama_nb", *args], input=stdin, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300, cwd=ROOT)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc.stderr)
    assert "error" not in proc.stderr and "Broken pipe" not in proc.stderr


@pytest.mark.parametrize("name", ["run", "ops", "help"])
def test_closed_stdout_is_said_before_any_work(name):
    args, stdin = COMMANDS[name]
    proc = subprocess.run([sys.executable, "-m", "llama_nb", *args], input=stdin, stderr=subprocess.PIPE,
                          text=True, timeout=120, cwd=ROOT, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 1 and proc.stderr.strip() == "error: stdout is closed: nothing could be printed"


def test_closed_or_full_stderr_does_not_turn_a_good_run_into_a_failure():
    args, _ = COMMANDS["run"]
    want = llama_nb(args).stdout
    closed = subprocess.run([sys.executable, "-m", "llama_nb", *args], stdout=subprocess.PIPE, text=True,
                            timeout=120, cwd=ROOT, preexec_fn=lambda: os.close(2))
    assert closed.returncode == 0 and closed.stdout == want
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "llama_nb", *args], stdout=subprocess.PIPE, stderr=full,
                              text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout == want
    # an error with nowhere to say it still exits 1
    bad = subprocess.run([sys.executable, "-m", "llama_nb", "run", "hi", "--model", "/no/such"],
                         stdout=subprocess.PIPE, text=True, timeout=120, cwd=ROOT, preexec_fn=lambda: os.close(2))
    assert bad.returncode == 1 and bad.stdout == ""


@pytest.mark.parametrize("name", ["run", "run --json", "tokenize", "info", "chat"])
def test_ascii_only_output_replaces_what_it_cannot_encode(name):
    args, stdin = COMMANDS[name]
    args = [a.replace("In the beginning", "Über 日本 🦙") for a in args]
    proc = llama_nb(args, input=stdin, env={"PYTHONIOENCODING": "ascii", "LC_ALL": "C"})
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc.stderr)


@pytest.mark.parametrize("value, phrase", [("0", "must be >= 1"), ("-4", "must be >= 1"), ("many", "is not a whole number")])
def test_bad_numba_num_threads_is_one_line(value, phrase):
    proc = llama_nb(["run", "hi", "--model", DEMO, "-n", "2"], env={"NUMBA_NUM_THREADS": value})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: $NUMBA_NUM_THREADS=") and phrase in lines[0]


def test_any_integer_is_a_seed_and_the_same_seed_gives_the_same_text():
    base = ["run", "And it came to pass", "--model", DEMO, "-n", "12", "--temperature", "0.9", "--json"]
    texts = {}
    for seed in ["-1", "-5", "0", "7", str(2**70), str(-(2**70))]:
        proc = llama_nb(base + ["--seed", seed])
        assert proc.returncode == 0, proc.stderr
        texts[seed] = json.loads(proc.stdout)["generated_ids"]
    assert llama_nb(base + ["--seed", "-5"]).stdout and json.loads(llama_nb(base + ["--seed", "-5"]).stdout)[
        "generated_ids"] == texts["-5"]
    assert len({tuple(v) for k, v in texts.items() if k != "-1"}) >= 4  # different seeds, different draws


def test_tiny_and_huge_temperatures_and_logits_do_not_overflow():
    from llama_nb.model.generate import Sampler
    from llama_nb.ops.opset import OpSet

    ops = OpSet.from_spec(None)
    logits = np.array([1e38, -1e38, 3e38, 0.0, -3e38], np.float32)
    assert Sampler(ops, temperature=1e-40, seed=1)(logits) == 2  # as good as greedy
    for seed in range(5):
        token = Sampler(ops, temperature=1e30, seed=seed)(logits)
        assert 0 <= token < 5
    assert Sampler(ops, temperature=5e-324, top_p=0.5, seed=3)(np.array([1.0, 2.0], np.float32)) == 1
    proc = llama_nb(["run", "hi", "--model", DEMO, "-n", "4", "--temperature", "1e-40"])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, phrase", [
    (["run", "hi", "-n", "0"], "'--max-tokens' / '-n'"),
    (["run", "hi", "--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["run", "hi", "--top-p", "2", "--temperature", "1"], "--top-p must be in (0, 1]"),
    (["run", "hi", "--ctx", "0"], "'--ctx'"),
    (["run", "hi", "--bogus"], "No such option: --bogus"),
    (["run"], "missing: give PROMPT"),
    (["chat", "--temperature", "nan"], "--temperature must be a finite number"),
    (["bench", "model", "-t", "0"], "'--threads' / '-t'"),
])
def test_usage_errors_are_one_line_and_exit_2(args, phrase):
    proc = llama_nb([*args, "--model", DEMO] if args[0] != "bench" else args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], proc.stderr
    assert "--help" in lines[0]


def _interrupt_after(delay: float, args: list[str]):
    proc = subprocess.Popen([sys.executable, "-m", "llama_nb", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.8, 1.5])
def test_ctrl_c_at_any_moment_exits_130_quietly(delay):
    # start-up, loading, compiling or generating, depending on the machine: always 130, no traceback
    code, out, err = _interrupt_after(delay, ["run", "In the beginning", "--model", DEMO, "-n", "20000",
                                              "--ctx", "20010"])
    assert code == 130, err
    no_traceback(err)


def test_a_swallowed_ctrl_c_while_compiling_still_stops_the_run():
    # a library that catches the KeyboardInterrupt of a Ctrl-C and carries on (the red team saw
    # runs go on to the end): the CLI notices the signal and stops anyway
    code = (
        "import os, signal, sys\n"
        "from llama_nb.model.load import Llama\n"
        "real = Llama.compile\n"
        "def compile(self):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        for _ in range(10**6): pass\n"
        "    except KeyboardInterrupt:\n"
        "        pass  # swallowed\n"
        "    return real(self)\n"
        "Llama.compile = compile\n"
        f"sys.argv = ['llama-nb', 'run', 'hi', '--model', {DEMO!r}, '-n', '5']\n"
        "from llama_nb._entry import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted while loading" in proc.stderr and proc.stdout == ""
    no_traceback(proc.stderr)


def test_version():
    from llama_nb import __version__

    proc = llama_nb(["--version"])
    assert proc.returncode == 0 and proc.stdout == f"llama-nb {__version__}\n"


def test_closed_stdin_is_the_end_of_input():
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "chat", "--model", DEMO], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, preexec_fn=lambda: os.close(0))
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc.stderr)
