"""QFT of a small LLaMA-shaped torch model with lowbit, from PyTorch.

Quantized full-parameter tuning as the QFT paper does it, on any torch
model whose linear layers are called as modules: every projection's weight
lives only in int8 (lowbit.torch_nn.quantize_linears_), is updated in place
inside the backward with Lion and 8-bit momentum and stochastic rounding
(QuantizedWeightOptimizer, fused: no gradient buffer), and the remaining
float parameters (embedding, norms, head) use lowbit.Lion8bit. The same
model and batches are trained with torch AdamW in float32 for comparison
unless --no-baseline.

    pip install ./python            # from the lowbit checkout; needs torch (CPU is enough)
    python examples/python/qft_tiny_llama.py --steps 300

Data: tinyshakespeare bytes (examples/llama/data). The model here is tiny
(dim 64, 2 layers) so that the run takes about a minute on two CPU cores;
swap in any model (e.g. transformers' LlamaForCausalLM) the same way.
"""

import argparse
import copy
import os
import time

import torch

import lowbit
from lowbit.torch_nn import QuantizedWeightOptimizer, quantize_linears_

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "llama", "data",
                    "tinyshakespeare.txt")


class TinyLlama(torch.nn.Module):
    """A LLaMA-shaped byte model: RMSNorm, causal attention through q / k /
    v / o projections, SwiGLU MLP, untied head (every projection a
    torch.nn.Linear called as a module, as in transformers' LLaMA)."""

    def __init__(self, dim=64, layers=2, heads=4, hidden=176, vocab=256):
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            b = torch.nn.Module()
            b.norm1, b.norm2 = torch.nn.RMSNorm(dim), torch.nn.RMSNorm(dim)
            b.q, b.k, b.v, b.o = (torch.nn.Linear(dim, dim, bias=False) for _ in range(4))
            b.gate, b.up = torch.nn.Linear(dim, hidden, bias=False), torch.nn.Linear(dim, hidden, bias=False)
            b.down = torch.nn.Linear(hidden, dim, bias=False)
            self.blocks.append(b)
        self.norm = torch.nn.RMSNorm(dim)
        self.lm_head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        bsz, t, d = x.shape
        for b in self.blocks:
            h = b.norm1(x)
            q, k, v = (p(h).view(bsz, t, self.heads, -1).transpose(1, 2) for p in (b.q, b.k, b.v))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b.o(a.transpose(1, 2).reshape(bsz, t, d))
            h = b.norm2(x)
            x = x + b.down(torch.nn.functional.silu(b.gate(h)) * b.up(h))
        return self.lm_head(self.norm(x))


def byte_batches(n, batch=16, seq=64, seed=5):
    """n (input, target) pairs of random tinyshakespeare windows."""
    with open(DATA, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        at = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        chunk = torch.stack([data[i:i + seq + 1] for i in at.tolist()])
        out.append((chunk[:, :-1], chunk[:, 1:]))
    return out


def lm_loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))


def make_qft(model, lr=1e-3, betas=(0.9, 0.95), seed=1):
    """Quantize model's projections to int8 (head kept) in place; returns
    (names replaced, optimizer of the quantized weights, optimizer of the
    float parameters)."""
    names = quantize_linears_(model, "int8", skip=["lm_head"])
    qopt = QuantizedWeightOptimizer(model, lr=lr, betas=betas, seed=seed)
    fopt = lowbit.Lion8bit([p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas)
    return names, qopt, fopt


def qft_step(model, qopt, fopt, batch):
    fopt.zero_grad()
    loss = lm_loss(model, batch)
    loss.backward()  # each quantized weight is updated here, as its gradient appears
    qopt.step()      # closes the step of the quantized weights
    fopt.step()
    return float(loss.detach())


def held_out_loss(model, batches):
    with torch.no_grad():
        return sum(float(lm_loss(model, b)) for b in batches) / len(batches)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3, help="QFT peak learning rate (Lion)")
    ap.add_argument("--baseline-lr", type=float, default=3e-3, help="torch AdamW learning rate")
    ap.add_argument("--no-baseline", action="store_true", help="skip the float32 AdamW run")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    base = TinyLlama()
    batches, held_out = byte_batches(args.steps), byte_batches(8, seed=99)
    model = copy.deepcopy(base)
    names, qopt, fopt = make_qft(model, lr=args.lr)
    q_bytes = qopt.optimizer.memory()
    n_float = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("quantized %d layers (%d weights, %.2f bytes/param with momentum); %d float parameters"
          % (len(names), q_bytes.params, q_bytes.bytes_per_param, n_float))
    start = time.time()
    for step, batch in enumerate(batches, 1):
        loss = qft_step(model, qopt, fopt, batch)
        if step % 50 == 0 or step == len(batches):
            rate = step / (time.time() - start)
            print("step %4d  loss %.4f  %.1f steps/s  eta %.0f s" % (step, loss, rate, (len(batches) - step) / rate),
                  flush=True)
    val = held_out_loss(model, held_out)
    print("QFT held-out loss: %.4f" % val)
    if not args.no_baseline:
        ref = copy.deepcopy(base)
        opt = torch.optim.AdamW(ref.parameters(), lr=args.baseline_lr, weight_decay=0.0)
        for batch in batches:
            opt.zero_grad()
            lm_loss(ref, batch).backward()
            opt.step()
        val_ref = held_out_loss(ref, held_out)
        print("torch AdamW fp32 held-out loss: %.4f (QFT %+.1f%%)" % (val_ref, 100 * (val / val_ref - 1)))


if __name__ == "__main__":
    main()
