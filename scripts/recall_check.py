"""How fast does a small model learn in-context associative recall, the core of Depo's k = 1?

``P`` random key -> value pairs, then ``Q`` queries ``key ? value``; the label at ``?`` is the key's value.
Trains lmsleep's all-attention ``HybridLM`` (``--model lmsleep``, d = 64, 4 blocks, no eviction) or a plain
PyTorch pre-norm causal transformer of the same size with learned positions (``--model torch``) with AdamW,
and prints loss and recall accuracy every 100 steps. The two learning at the same pace says that a slow start
on Depo is the task at this size, not lmsleep's attention.

    python scripts/recall_check.py --model lmsleep
    python scripts/recall_check.py --model torch
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

KEYS, VALUES = 20, 20  # key tokens 0..19 (0 doubles as "?"), value tokens 20..39


def batch(
    generator: torch.Generator, size: int, pairs: int, queries: int
) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.stack([torch.randperm(KEYS, generator=generator)[:pairs] for _ in range(size)])
    values = torch.randint(KEYS, KEYS + VALUES, (size, pairs), generator=generator)
    context = torch.stack([keys, values], -1).reshape(size, 2 * pairs)
    asked = torch.stack([torch.randperm(pairs, generator=generator)[:queries] for _ in range(size)])
    q_keys, q_values = keys.gather(1, asked), values.gather(1, asked)
    tail = torch.stack([q_keys, torch.zeros_like(q_keys), q_values], -1).reshape(size, 3 * queries)
    x = torch.cat([context, tail], 1)
    labels = torch.full_like(x, -100)
    labels[:, 2 * pairs + 1 :: 3] = q_values
    return x, labels


class TorchTransformer(torch.nn.Module):
    def __init__(self, vocab: int, dim: int = 64, depth: int = 4, heads: int = 4, max_len: int = 128):
        super().__init__()
        self.embed, self.position = torch.nn.Embedding(vocab, dim), torch.nn.Embedding(max_len, dim)
        self.blocks = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(dim, heads, 4 * dim, 0.0, batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm, self.head = torch.nn.LayerNorm(dim), torch.nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        T = x.shape[1]
        h = self.embed(x) + self.position(torch.arange(T))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(T)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h)), None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("lmsleep", "torch"), default="lmsleep")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--queries", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    vocab = KEYS + VALUES
    if args.model == "lmsleep":
        from lmsleep.models import HybridLM

        model = HybridLM(vocab, 64, "attn,attn,attn,attn")
    else:
        model = TorchTransformer(vocab)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(1, args.steps + 1):
        x, labels = batch(generator, 64, args.pairs, args.queries)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            asked = labels >= 0
            acc = (logits.argmax(-1)[asked] == labels[asked]).float().mean().item()
            print(
                f"step {step}  loss {loss.item():.3f}  recall {acc:.3f}  {time.time() - start:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
