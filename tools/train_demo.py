"""Train llama_nb's built-in demo model: a small Llama 3 on the King James Bible, CPU only.

    pip install -e ".[train]"            # torch, for this script only (never at run time)
    apt-get install bible-kjv-text       # the corpus (Debian/Ubuntu; the `bible` reader comes along)
    python tools/train_demo.py --steps 2400 --minutes 38 --out llama_nb/demo

Why this corpus: the King James Bible (1611/1769) is public domain everywhere, installable by name
on Debian (`bible-kjv-text`, read with `bible -f gen1:1-rev22:21`), 4.4 MB of one consistent,
instantly recognisable style, so a few million parameters trained for half an hour on one CPU
core produce text a reader can judge ("And the LORD spake unto Moses, saying, ..."). The last four
books (2 John, 3 John, Jude, Revelation: 6% of the books, 1.4% of the verses) are held out for
validation, so the held-out loss is measured on text the model never saw.

Text layout: one verse per line (the "Ge1:1 " references stripped), a blank line between
chapters. Every training window starts at a verse with <|begin_of_text|>, exactly as `llama-nb run`
encodes a prompt (bos=True), then 255 more tokens (the window may run over verses and chapters).

The model is Meta's Llama 3 architecture (llama_models/llama3/model.py), block for block, with
Meta's module names so `state_dict()` has Meta's keys:
    h   = x + wo(attention(rope(wq(rmsnorm(x))), rope(wk(.)), wv(.)))     grouped-query, causal
    out = h + w2(silu(w1(rmsnorm(h))) * w3(rmsnorm(h)))                   SwiGLU, Meta's width
    rmsnorm(x) = x / sqrt(mean(x^2) + eps) * weight;   no biases anywhere;   output untied
    rope: Meta's interleaved pairs (x[2i], x[2i+1]) rotated by p * theta^(-2i/Dh), float32 angles
It trains with float32 weights (bf16 autocast for the matmuls, --amp) and is saved in bf16 (the held-out loss is measured AFTER rounding to bf16,
i.e. on the shipped weights). Output, in Meta's format, read by llama_nb's ordinary loader:
    consolidated.00.pth  torch.save of {Meta key: bf16 tensor}
    params.json          Meta's keys (dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of,
                         ffn_dim_multiplier, norm_eps, rope_theta, use_scaled_rope)
    tokenizer.model      4,096 byte-level BPE ranks trained here on the training books
                         (tools/train_bpe.py, Meta's split pattern); specials are ids 4096..4351
    README.md            the model card: settings, wall time, losses, samples (written here)

Reproducible: one seed drives init and window sampling (the card's samples use fixed --seed
values); one torch thread
(`torch.set_num_threads(1)`: the machine is shared, and one thread is deterministic). The schedule
is fixed by --steps (warmup then cosine to 10%); --minutes only stops early as a safety cap, and
the card records how many steps ran.

Result of the command above (the shipped llama_nb/demo, README.md there has the full card): 6.66M
parameters (13.3 MB bf16), 2,400 steps (5 epochs of 991k tokens) in 29.7 min on one shared core;
held-out loss 3.867 nats/token (perplexity 47.8), training books 2.717 (15.1).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # llama_nb and tools/ from a checkout
from llama_nb.io.params import ModelArgs  # noqa: E402
from tools.train_bpe import count_pieces, train_bpe, write_tokenizer_model  # noqa: E402

HELD_OUT_BOOKS = ("2John", "3John", "Jude", "Rev")  # the last four books (see docstring)


# ---- model: Meta's blocks and names --------------------------------------------------------------


def demo_args(**sizes) -> ModelArgs:
    """params.json of the demo: llama_nb's own ModelArgs (Meta's keys and FFN formula), with the
    demo's small sizes and a rope_theta suited to its 256-token context."""
    return ModelArgs(**{**dict(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab_size=4096 + 256, multiple_of=64,
                               rope_theta=10000.0, use_scaled_rope=False), **sizes})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_cos_sin(head_dim: int, n_pos: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32[n_pos, head_dim/2] cos and sin of Meta's precompute_freqs_cis angles (unscaled)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, Dh]: rotate the interleaved pairs (x[2i], x[2i+1]) as Meta's complex product."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = a.n_heads, a.n_kv_heads, a.head_dim
        self.wq = nn.Linear(a.dim, a.n_heads * a.head_dim, bias=False)
        self.wk = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=False)
        self.wv = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=False)
        self.wo = nn.Linear(a.n_heads * a.head_dim, a.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = apply_rope(self.wq(x).view(b, t, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).view(b, t, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        rep = self.n_heads // self.n_kv_heads  # Meta's repeat_kv: query head h reads kv head h // rep
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(a.dim, a.hidden_dim, bias=False)
        self.w2 = nn.Linear(a.hidden_dim, a.dim, bias=False)
        self.w3 = nn.Linear(a.dim, a.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attention = Attention(a)
        self.feed_forward = FeedForward(a)
        self.attention_norm = RMSNorm(a.dim, a.norm_eps)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Meta's Transformer without the KV cache (training sees whole windows): logits [B, T, V]."""

    def __init__(self, a: ModelArgs, max_seq_len: int = 256):
        super().__init__()
        if a.use_scaled_rope:
            raise ValueError("the demo trainer implements unscaled RoPE only")
        self.args = a
        self.tok_embeddings = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(TransformerBlock(a) for _ in range(a.n_layers))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.output = nn.Linear(a.dim, a.vocab_size, bias=False)
        cos, sin = rope_cos_sin(a.head_dim, max_seq_len, a.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.output(self.norm(h)).float()

    def init_weights(self, generator: torch.Generator) -> None:
        """GPT-2/Llama init: N(0, 0.02); residual outputs (wo, w2) scaled by 1/sqrt(2 n_layers)."""
        residual_std = 0.02 / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                std = residual_std if name.endswith(("wo.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std, generator=generator)


def load_demo(folder: Path) -> Transformer:
    """The training-framework model with the weights of a written folder (bf16 widened), eval mode."""
    params = json.loads((Path(folder) / "params.json").read_text())
    model = Transformer(ModelArgs.from_dict(params))
    state = torch.load(Path(folder) / "consolidated.00.pth", map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


# ---- corpus ----------------------------------------------------------------------------------------

_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def read_kjv() -> list[tuple[str, int, str]]:
    """[(book, chapter, verse text)] for all 31,102 verses, via Debian's `bible` reader."""
    try:
        raw = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        sys.exit("the corpus needs Debian's bible-kjv-text: apt-get install bible-kjv-text")
    verses = []
    for line in raw.splitlines():
        m = _VERSE.match(line)
        if m:
            verses.append((m[1], int(m[2]), m[4].strip()))
    if len(verses) != 31102:
        sys.exit(f"expected 31102 verses from `bible`, got {len(verses)}")
    return verses


def layout(verses: list[tuple[str, int, str]]) -> list[str]:
    """One line per verse, a blank line before each new chapter: each item is one verse's text."""
    out, prev = [], None
    for book, chapter, text in verses:
        sep = "\n" if prev is not None and (book, chapter) != prev else ""
        out.append(sep + text + "\n")
        prev = (book, chapter)
    return out


def encode_verses(lines: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64[N] tokens of all lines, int64[M] offset where each line starts)."""
    ids, starts = [], []
    for line in lines:
        starts.append(len(ids))
        ids += tokenizer.encode_ordinary(line)
    return torch.tensor(ids), torch.tensor(starts)


def windows(tokens: torch.Tensor, starts: torch.Tensor, idx: torch.Tensor, seq: int, bos: int):
    """x, y int64[B, seq]: [bos] + seq tokens from each chosen verse start, and the next tokens."""
    rows = []
    for s in starts[idx].tolist():
        body = tokens[s : s + seq]
        if len(body) < seq:  # near the end of the split: wrap around to its start
            body = torch.cat([body, tokens[: seq - len(body)]])
        rows.append(torch.cat([torch.tensor([bos]), body]))
    batch = torch.stack(rows)
    return batch[:, :-1], batch[:, 1:]


@torch.no_grad()
def mean_loss(model: Transformer, tokens, starts, seq: int, bos: int, n_windows: int) -> float:
    """Mean next-token cross-entropy over n_windows evenly spaced windows (deterministic)."""
    model.eval()
    pick = torch.linspace(0, len(starts) - 1, n_windows).round().long()
    total, count = 0.0, 0
    for chunk in pick.split(8):
        x, y = windows(tokens, starts, chunk, seq, bos)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


# ---- training --------------------------------------------------------------------------------------


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_meta_format(model: Transformer, out: Path) -> None:
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out / "consolidated.00.pth")
    params = model.args.to_dict()
    if params["ffn_dim_multiplier"] is None:  # Meta's files omit it rather than write null
        del params["ffn_dim_multiplier"]
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "llama_nb" / "demo")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=6)
    ap.add_argument("--n-heads", type=int, default=8)
    ap.add_argument("--n-kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096, help="BPE ranks (specials come on top)")
    ap.add_argument("--seq", type=int, default=256, help="context length of training windows")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--minutes", type=float, default=38.0, help="stop early after this wall time")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=1611)
    ap.add_argument("--samples-only", action="store_true",
                    help="train nothing: rewrite the samples section of --out's README.md")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast for the matmuls (master weights stay float32): 2x faster "
                    "on one core here (1.1 -> 0.5 CPU s per step at the default size)")
    args = ap.parse_args(argv)
    if args.samples_only:
        return write_samples(args.out)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    verses = read_kjv()
    lines = layout(verses)
    held = [i for i, v in enumerate(verses) if v[0] in HELD_OUT_BOOKS]
    cut = held[0]
    assert held == list(range(cut, len(verses))), "held-out books must be the last ones"
    train_lines, val_lines = lines[:cut], lines[cut:]
    val_lines[0] = val_lines[0].lstrip("\n")

    pieces = count_pieces("".join(train_lines))
    write_tokenizer_model(train_bpe(pieces, args.vocab), args.out / "tokenizer.model")
    bpe_seconds = time.perf_counter() - t0
    from llama_nb.io.tokenizer import Tokenizer  # the run-time tokenizer encodes the training data

    tokenizer = Tokenizer(args.out / "tokenizer.model")
    train_tok, train_starts = encode_verses(train_lines, tokenizer)
    val_tok, val_starts = encode_verses(val_lines, tokenizer)
    bos = tokenizer.bos_id
    chars = sum(map(len, train_lines))
    print(f"BPE {args.vocab} ranks in {bpe_seconds:.1f} s; train {len(train_tok)} tokens "
          f"({chars / len(train_tok):.2f} chars/token, {len(train_lines)} verses); "
          f"held out {len(val_tok)} tokens ({len(val_lines)} verses)", flush=True)

    margs = demo_args(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                      vocab_size=tokenizer.n_words)
    model = Transformer(margs, max_seq_len=args.seq)
    gen = torch.Generator().manual_seed(args.seed)
    model.init_weights(gen)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {n_params / 1e6:.2f}M params, hidden {margs.hidden_dim}, {margs.to_dict()}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "tok_embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "tok_embeddings" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    log: list[str] = []
    train_start = time.perf_counter()
    step, smooth = 0, None
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        idx = torch.randint(len(train_starts), (args.batch,), generator=gen)
        x, y = windows(train_tok, train_starts, idx, args.seq, bos)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        elapsed = time.perf_counter() - train_start
        last = step + 1 == args.steps or elapsed > args.minutes * 60
        if (step + 1) % args.eval_every == 0 or last:
            val = mean_loss(model, val_tok, val_starts, args.seq, bos, 64)
            line = (f"step {step + 1:5d}  lr {opt.param_groups[0]['lr']:.2e}  train {smooth:.3f}  "
                    f"val {val:.3f} (ppl {math.exp(val):.1f})  {elapsed / 60:.1f} min")
            print(line, flush=True)
            log.append(line)
        if last:
            break
    train_seconds = time.perf_counter() - train_start

    save_meta_format(model, args.out)
    shipped = load_demo(args.out)  # the bf16-rounded weights, as llama_nb will see them
    val = mean_loss(shipped, val_tok, val_starts, args.seq, bos, len(val_starts))
    train_loss = mean_loss(shipped, train_tok, train_starts, args.seq, bos, 256)
    print(f"shipped bf16: held-out loss {val:.3f} (ppl {math.exp(val):.1f}), train {train_loss:.3f}", flush=True)
    write_card(args, margs, n_params, step + 1, train_seconds, bpe_seconds, len(train_tok), len(val_tok),
               val, train_loss, log)
    write_samples(args.out)


# Prompts and `llama-nb run` options for the card's samples: greedy, then two seeded samplings.
SAMPLES = (
    ("In the beginning God created", ["--max-tokens", "60"]),
    ("And the LORD spake unto Moses, saying,", ["--max-tokens", "60", "--temperature", "0.8", "--top-p", "0.9", "--seed", "1"]),
    ("Blessed are the", ["--max-tokens", "60", "--temperature", "0.7", "--top-p", "0.9", "--seed", "7"]),
)


def write_samples(out: Path) -> None:
    """Run `llama-nb run` (the real CLI, llama_nb's kernels) on the written folder and append the
    completions to its README.md, replacing an older "## Samples" section."""
    section = ["## Samples", "", "Produced by `llama-nb run` on these files (the prompt, then the model's continuation):", ""]
    for prompt, options in SAMPLES:
        cmd = [sys.executable, "-m", "llama_nb", "run", prompt, "--model", str(out), *options, "--json"]
        result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        shown = " ".join(["llama-nb run", json.dumps(prompt), *options])
        section += [f"`{shown}`", "", "```", prompt + result["text"].rstrip("\n"), "```", ""]
        print(f"{shown}\n{prompt}{result['text']}\n", flush=True)
    card = out / "README.md"
    text = card.read_text().split("## Samples")[0].rstrip("\n")
    card.write_text(text + "\n\n" + "\n".join(section))


def write_card(args, margs: ModelArgs, n_params: int, steps_run: int, train_seconds: float, bpe_seconds: float,
               n_train: int, n_val: int, val: float, train_loss: float, log: list[str]) -> None:
    files = {p.name: p.stat().st_size for p in sorted(args.out.iterdir()) if p.name != "README.md"}
    sizes = ", ".join(f"{n} {s / 1e6:.2f} MB" if s >= 100_000 else f"{n} {s:,} bytes"
                      for n, s in files.items() if not n.startswith("__"))
    command = "python tools/train_demo.py " + " ".join(sys.argv[1:])
    card = f"""# llama_nb demo model: a {n_params / 1e6:.1f}M-parameter Llama 3 trained on the King James Bible

Generated by `tools/train_demo.py` (edit that script, not this file). Built in so that
`llama-nb run` shows real text the minute llama_nb is installed; it knows only the KJV's English.

- Corpus: the King James Bible (public domain), Debian package `bible-kjv-text`. Training: all
  books but the last four ({n_train:,} tokens). Held out: 2 John, 3 John, Jude, Revelation
  ({n_val:,} tokens). One verse per line, a blank line between chapters.
- Tokenizer: {args.vocab:,} byte-level BPE ranks trained on the training books with Meta's split
  pattern ({bpe_seconds:.0f} s), Meta's 256 special tokens after them (vocab_size {margs.vocab_size}).
- Architecture: Meta's Llama 3 blocks. {json.dumps(margs.to_dict())}; head_dim {margs.head_dim},
  FFN hidden {margs.hidden_dim}, untied output, {n_params:,} parameters, stored in bf16.
- Training: AdamW (betas 0.9/0.95, weight decay {args.weight_decay} on matrices), peak LR {args.lr},
  {args.warmup} warmup steps then cosine to 10% over {args.steps} steps, batch {args.batch} x
  {args.seq} tokens, gradient clip 1.0, seed {args.seed}, float32 weights{' with bf16 autocast' if args.amp else ''}
  on 1 CPU thread.
  {steps_run} steps ran in {train_seconds / 60:.1f} min ({steps_run * args.batch * args.seq / n_train:.1f} epochs).
- Command: `{command}`
- Held-out loss (the bf16 weights shipped, every held-out verse start as a {args.seq}-token
  window): **{val:.3f} nats/token, perplexity {math.exp(val):.1f}**; training books: {train_loss:.3f}
  (perplexity {math.exp(train_loss):.1f}).
- Files: {sizes}.

## Training log

```
{chr(10).join(log)}
```
"""
    (args.out / "README.md").write_text(card)


if __name__ == "__main__":
    main()
