"""llama_nb's ops: declarations (specs.py), the Numba kernels, the NumPy references, the registry.

Importing this package declares every op and registers every built-in implementation.
Choose implementations with an `OpSet` (opset.py); look one up with `registry.get`.
"""

from llama_nb.ops import registry  # noqa: F401
from llama_nb.ops.opset import OpSet  # noqa: F401  (importing it registers the built-ins)
from llama_nb.ops.registry import get, impls, ops, register  # noqa: F401
