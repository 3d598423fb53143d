"""`bench quality` against Meta's reference model: the bf16 perplexity it reports is the one Meta's
own Transformer gives on the same chunks (llama-perplexity's: BOS first, the second half scored),
and the quantized formats are measured against it."""

from __future__ import annotations

import math

import numpy as np
import torch

from llama_nb.io.tokenizer import Tokenizer
from llama_nb.model.quality import measure_quality
from llama_nb.ops.jit import HAS_AVX512_BF16
from tests.meta_reference import MetaReference
from tests.test_gguf import wide  # noqa: F401 - the fixture: rows of whole Q4_K blocks, demo tokenizer

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. ") * 4
CTX = 32


def test_bf16_perplexity_is_meta_s_and_the_formats_are_measured_against_it(wide):  # noqa: F811
    results = {r.type: r for r in measure_quality(wide, TEXT, ["q8_0", "q4_k_m"], ctx=CTX, max_chunks=2)}
    tokenizer = Tokenizer(wide / "tokenizer.model")
    tokens = tokenizer.encode(TEXT, bos=False, eos=False)
    meta = MetaReference(wide, max_seq_len=CTX)
    nll = []
    for c in range(2):
        chunk = [tokenizer.bos_id] + tokens[c * CTX + 1 : (c + 1) * CTX]
        log_p = torch.log_softmax(torch.from_numpy(meta.forward(chunk, 0)).double(), -1).numpy()
        nll += [-log_p[j, chunk[j + 1]] for j in range(CTX // 2, CTX - 1)]
    bf16 = results["bf16"]
    assert bf16.n_tokens == len(nll) == 2 * (CTX // 2 - 1)
    assert math.isclose(bf16.perplexity, math.exp(np.mean(nll)), rel_tol=2e-3 if HAS_AVX512_BF16 else 3e-3)  # bf16 activations vs float32 (seen 0.21% on AVX2)
    assert bf16.kl_mean == 0 and bf16.top1 == 1 and bf16.bits_per_weight == 16
    q8, q4 = results["q8_0"], results["q4_k_m"]
    assert q8.bits_per_weight == 8.5 and 4.5 < q4.bits_per_weight < 6.5625
    # random weights: nearly flat next-token distributions, so top-1 is full of near-ties; KL is not
    assert 0 < q8.kl_mean < q4.kl_mean < 0.5 and 0 <= q4.top1 <= 1 and 0 <= q8.top1 <= 1
    assert q8.n_tokens == q4.n_tokens == bf16.n_tokens
