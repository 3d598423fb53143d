"""Compile the prefill kernels in a helper process while the caller compiles the decode ones.

Numba compiles on the calling thread and holds the GIL while it does, so one process compiles on
one core. The first run after installing (or upgrading) llama_nb finds Numba's on-disk cache
empty and spends most of its start-up compiling; with two cores, a second process can compile
half of the kernels into the same cache meanwhile:

    caller                                       helper (python -m llama_nb.model.precompile)
    probe: argmax from the cache? yes -> done     .
    no: start the helper ----------------------> warm_kernels(T = 2): prefill kernels -> cache
    warm_kernels(T = 1): decode kernels           .
    wait for the helper                           exits
    warm_kernels(T = 2): loaded from the cache

Numba writes each cache entry atomically and looks the cache up when a signature is first
needed, so the caller finds the helper's entries; if the helper failed for any reason, the caller
compiles them itself. A warm start never starts the helper.
Measured (2 cores, demo model, empty cache, `llama-nb run`): compile 14.6 s alone, 8.5 s with the helper.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np

from llama_nb.model.transformer import KernelSpec, warm_kernels
from llama_nb.ops.registry import OpSet

# argmax's smallest kernel loads from the cache in about 10 ms and compiles in about 0.5 s.
COLD_PROBE_SECONDS = 0.2
HELPER_TIMEOUT_SECONDS = 600


def start_if_cold(ops: OpSet, spec: KernelSpec) -> subprocess.Popen | None:
    """Start the helper when the kernels are not in the cache yet; None when they are (or when
    there is no cache or no second core to use)."""
    from llama_nb.ops._jit import CACHE

    if not CACHE or (os.cpu_count() or 1) < 2:
        return None
    t0 = time.perf_counter()
    ops.argmax(np.ones(3, np.float32))
    if time.perf_counter() - t0 < COLD_PROBE_SECONDS:
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "llama_nb.model.precompile", json.dumps(asdict(spec))],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None  # the caller compiles everything itself


@contextlib.contextmanager
def running(helper: subprocess.Popen):
    """Within: the caller's own compiling. On leaving, wait for the helper; if the caller's part
    raised (Ctrl-C), or the helper hangs, stop the helper instead."""
    try:
        yield
        helper.wait(timeout=HELPER_TIMEOUT_SECONDS)
    except BaseException:
        helper.kill()
        helper.wait()
        if sys.exc_info()[0] is not subprocess.TimeoutExpired:
            raise


def main(argv: list[str]) -> int:
    spec = KernelSpec(**json.loads(argv[0]))
    warm_kernels(OpSet.from_spec(spec.impl), spec, token_counts=(2,))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
