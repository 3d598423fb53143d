"""Every op llama_nb declares and every implementation it ships, registered by importing this module.

The declarations come first (specs.py), then the Numba kernels (one op family per file), then
the NumPy references. Nothing here is imported by the registry itself; the OpSet module imports
this one, so building an OpSet (or importing llama_nb.ops) is what registers the built-ins.
"""

from llama_nb.ops import specs  # noqa: F401  (declares the ops; must come first)
from llama_nb.ops import bf16, embedding, rmsnorm, linear, rope, softmax, silu, attention, argmax  # noqa: F401,E401
from llama_nb.ops import reference  # noqa: F401
from llama_nb.ops import quant_linear  # noqa: F401  (the block formats q8_0, q4_k, q6_k and their kernels)
