"""ggml's block formats, as llama.cpp's GGUF files store them: q8_0, q4_k, q6_k.

Importing this package registers the three WeightFormats (llama_nb/formats.py). Each module
documents its block layout byte by byte and the math of dequantize and quantize:

    q8_0.py   Q8_0   32 weights, 34 bytes (fp16 d + 32 int8)                  8.5 bits per weight
    q4_k.py   Q4_K   256 weights, 144 bytes (fp16 d, dmin; 6-bit scales, mins; 4-bit q)   4.5
    q6_k.py   Q6_K   256 weights, 210 bytes (4 + 2-bit q; int8 scales per 16; fp16 d)     6.5625

A Weight of these formats has data uint8[N, K // block * block_bytes]: each row the row's blocks,
byte for byte as in the GGUF file (so a tensor maps without a copy), logical shape [N, K], no
`scales` array. The Numba kernels that multiply them are in llama_nb/ops/quant_*.py.
"""

from llama_nb.quant.q8_0 import Q8_0  # noqa: F401
from llama_nb.quant.q4_k import Q4_K  # noqa: F401
from llama_nb.quant.q6_k import Q6_K  # noqa: F401
