"""`python -m llama_nb.ops.compile_helper JOB_JSON`: the cold-start compile helper process that
llama_nb/ops/jit.py starts (see there); it compiles the prefill kernels into Numba's cache."""

import sys

from llama_nb.ops import jit
from llama_nb.ops.opset import OpSet

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m llama_nb.ops.compile_helper JOB_JSON")
    sys.exit(jit.helper_main(sys.argv[1], lambda spec, precision: OpSet.from_spec(spec, precision=precision)))
