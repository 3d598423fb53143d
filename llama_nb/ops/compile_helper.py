"""`python -m llama_nb.ops.compile_helper PARENT_PID JOB_JSON`: the cold-start compile helper that
llama_nb/ops/jit.py starts (see there); it compiles the prefill kernels into Numba's cache.

It first asks Linux to kill it when its parent dies (PR_SET_PDEATHSIG), before the slow imports,
and exits at once if the parent is already gone: no helper outlives a killed llama-nb.
"""

import os
import sys

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m llama_nb.ops.compile_helper PARENT_PID JOB_JSON")
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != int(sys.argv[1]):  # the parent died before the line above took effect
        sys.exit(0)

    from llama_nb.ops import jit
    from llama_nb.ops.opset import OpSet

    sys.exit(jit.helper_main(sys.argv[2], lambda spec, precision: OpSet.from_spec(spec, precision=precision)))
