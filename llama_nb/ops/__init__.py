"""llama_nb's ops: declarations (specs), the Numba kernels, and the NumPy float32 references.

Importing this package declares every op and registers every built-in implementation.
Look implementations up through `llama_nb.ops.registry` (or choose them with an `OpSet`).
"""

from llama_nb.ops import specs  # noqa: F401  (declares the ops; must come first)
from llama_nb.ops import bf16, embedding, rmsnorm, matmul, rope, softmax, silu, attention, argmax  # noqa: F401,E401
from llama_nb.ops import reference  # noqa: F401
from llama_nb.ops.registry import OpSet, get, impls, ops, register  # noqa: F401
