#!/usr/bin/env python3
"""Side by side: the same small LLaMA trained from PyTorch with lowbit's
low-bit optimizers and quantized weights and with its peers' (torch,
bitsandbytes, torchao), on the CPU, on the same data in the same order.

The model is Hugging Face transformers' LlamaForCausalLM in the shape of
the LLaMA trainer's tiny default (dim 128, 4 layers, 4 heads with 2 kv
heads, SwiGLU 352, 256 byte tokens, untied head: 803,968 parameters),
trained on tinyshakespeare bytes (last 10 % held out) with the trainer's
recipe: batch 16 x 128, 30 warmup steps, cosine to 10 % of the peak, global
gradient-norm clipping at 1.0, no weight decay, AdamW betas 0.9 / 0.95.
Every configuration starts from the same float32 initial weights and reads
the same batches. For each it prints the validation loss every
--eval-every steps (the mean next-byte cross-entropy over the same 8 x 16
held-out windows), the median time of a training step (forward, backward,
clipping, optimizer) and of the optimizer step alone, and the bytes per
parameter of the weights and of the optimizer states, counted from the
tensors each library allocated (torchao's state tensors through their
inner tensors; lowbit's through its memory report).

Configurations (--configs, comma-separated; default all):
  torch-adamw        float32 weights, torch.optim.AdamW(fused=True)
  bnb-adamw8         float32 weights, bitsandbytes AdamW8bit
  torchao-adamw8     float32 weights, torchao.optim.AdamW8bit
  lowbit-adamw8      float32 weights, lowbit.AdamW8bit
  torchao-adamw4     float32 weights, torchao.optim.AdamW4bit
  lowbit-adamw4      float32 weights, lowbit.AdamW4bit
  torchao-bf16       bfloat16 weights and states, torchao.optim._AdamW(bf16_stochastic_round=True)
  lowbit-bf16        bfloat16 weights and states, lowbit.LowbitOptimizer(states="bf16")
  torchao-int8qt     torchao int8_weight_only_quantized_training() Linears (row-wise int8
                     weights, stochastic rounding), torchao.optim.AdamW8bit for all parameters
  lowbit-qft-adamw8  lowbit.torch_nn QuantizedLinear int8 (block 256) weights, AdamW with
                     8-bit states through QuantizedWeightOptimizer; the other parameters
                     (embedding, norms) in float32 with lowbit.AdamW8bit
  lowbit-qft         the same with Lion and 8-bit momentum (QFT's recipe, peak lr --lion-lr)
  lowbit-qft-adamw8-torchmm, lowbit-qft-torchmm
                     the same two with QuantizedLinear.products = "torch": each product
                     decodes the layer's weight and runs torch's matmul
In the int8 configurations the embedding and the RMSNorm gains stay float32
(neither library quantizes them from PyTorch); the lm_head is a Linear and is
quantized. A configuration whose library is missing says so.

Development-only: torch, transformers, bitsandbytes and torchao are never
dependencies of lowbit. Run
    PYTHONPATH=python LOWBIT_C_LIBRARY=build/capi/liblowbit_c.so \\
        /tmp/venv/bin/python bench/compare_torch_training.py --steps 600
"""
import argparse
import math
import os
import statistics
import sys
import time

CONFIGS = ["torch-adamw", "bnb-adamw8", "torchao-adamw8", "lowbit-adamw8", "torchao-adamw4", "lowbit-adamw4",
           "torchao-bf16", "lowbit-bf16", "torchao-int8qt", "lowbit-qft-adamw8", "lowbit-qft",
           "lowbit-qft-adamw8-torchmm", "lowbit-qft-torchmm"]


def parse_args():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    ap.add_argument("--lion-lr", type=float, default=1e-3, help="Lion peak learning rate")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=0, help="torch and lowbit threads (0: all cores)")
    ap.add_argument("--data", default=os.path.join(here, "..", "examples", "llama", "data", "tinyshakespeare.txt"))
    ap.add_argument("--jsonl", help="append one JSON record per configuration to this file")
    args = ap.parse_args()
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        ap.error("unknown configuration(s) %s (known: %s)" % (", ".join(unknown), ", ".join(CONFIGS)))
    return args


class Data:
    """Byte corpus, 90 / 10 split; training windows drawn by a seeded torch
    generator (the same sequence for every configuration), validation on
    fixed windows."""

    def __init__(self, path, batch, seq, seed, torch):
        with open(path, "rb") as f:
            raw = f.read()
        ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
        cut = len(ids) * 9 // 10
        self.train, self.val = ids[:cut], ids[cut:]
        self.batch, self.seq, self.seed, self.torch = batch, seq, seed, torch
        self.gen = torch.Generator().manual_seed(seed)
        vgen = torch.Generator().manual_seed(seed + 1)
        starts = torch.randint(0, len(self.val) - seq - 1, (8 * batch,), generator=vgen)
        self.val_windows = torch.stack([self.val[s:s + seq + 1] for s in starts.tolist()]).view(8, batch, seq + 1)

    def restart(self):
        self.gen = self.torch.Generator().manual_seed(self.seed)

    def next_batch(self):
        starts = self.torch.randint(0, len(self.train) - self.seq - 1, (self.batch,), generator=self.gen)
        w = self.torch.stack([self.train[s:s + self.seq + 1] for s in starts.tolist()])
        return w[:, :-1], w[:, 1:]


def make_model(torch, transformers):
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(cfg)


def loss_of(model, torch, x, y):
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def evaluate(model, torch, data):
    model.eval()
    with torch.no_grad():
        losses = [loss_of(model, torch, w[:, :-1], w[:, 1:]).item() for w in data.val_windows]
    model.train()
    return sum(losses) / len(losses)


def lr_factor(step, args):
    """Linear warmup over args.warmup steps, then cosine from 1 to 0.1 (step counts from 1)."""
    if step <= args.warmup:
        return step / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def tensor_bytes(t, torch):
    """Bytes of a tensor's own data, looking into tensor subclasses (torchao's
    low-bit states and int8 weights) through __tensor_flatten__."""
    if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n), torch) for n in names)
    return t.numel() * t.element_size()


class Run:
    """One configuration: model, optimizers and how a step applies them."""

    def __init__(self, name, args, torch, transformers, init_state):
        self.name, self.args, self.torch = name, args, torch
        self.model = make_model(torch, transformers)
        self.model.load_state_dict(init_state)
        self.peak_lr = args.lion_lr if name.startswith("lowbit-qft") and "adamw" not in name else args.lr
        self.qopt = None  # lowbit QuantizedWeightOptimizer (QFT configurations)
        self.opts = []  # torch-style optimizers
        betas = (0.9, 0.95)
        params = list(self.model.parameters())
        if name == "torch-adamw":
            self.opts = [torch.optim.AdamW(params, lr=args.lr, betas=betas, weight_decay=0.0, fused=True)]
        elif name == "bnb-adamw8":
            import bitsandbytes as bnb
            self.opts = [bnb.optim.AdamW8bit(params, lr=args.lr, betas=betas, weight_decay=0.0)]
        elif name in ("torchao-adamw8", "torchao-adamw4"):
            import torchao.optim as tao
            cls = tao.AdamW8bit if name.endswith("8") else tao.AdamW4bit
            self.opts = [cls(params, lr=args.lr, betas=betas, weight_decay=0.0)]
        elif name in ("lowbit-adamw8", "lowbit-adamw4"):
            import lowbit
            cls = lowbit.AdamW8bit if name.endswith("8") else lowbit.AdamW4bit
            self.opts = [cls(params, lr=args.lr, betas=betas, weight_decay=0.0, seed=args.seed)]
        elif name == "torchao-bf16":
            import torchao.optim as tao
            self.model.to(torch.bfloat16)
            self.opts = [tao._AdamW(list(self.model.parameters()), lr=args.lr, betas=betas, weight_decay=0.0,
                                    bf16_stochastic_round=True)]
        elif name == "lowbit-bf16":
            import lowbit
            self.model.to(torch.bfloat16)
            self.opts = [lowbit.LowbitOptimizer(list(self.model.parameters()), rule="adamw", states="bf16",
                                                lr=args.lr, betas=betas, weight_decay=0.0, seed=args.seed)]
        elif name == "torchao-int8qt":
            import torchao.optim as tao
            from torchao import quantize_
            from torchao.prototype.quantized_training import int8_weight_only_quantized_training
            quantize_(self.model, int8_weight_only_quantized_training())
            self.opts = [tao.AdamW8bit(list(self.model.parameters()), lr=args.lr, betas=betas, weight_decay=0.0)]
        elif name.startswith("lowbit-qft"):
            import lowbit
            from lowbit.torch_nn import QuantizedWeightOptimizer, quantize_linears_
            quantize_linears_(self.model, "int8", block_size=256,
                              products="torch" if name.endswith("-torchmm") else "lowbit")
            rest = [p for p in self.model.parameters() if p.requires_grad]
            if "adamw" not in name:
                self.qopt = QuantizedWeightOptimizer(self.model, rule="lion", states="int8", fused=False,
                                                     lr=args.lion_lr, betas=betas, weight_decay=0.0, seed=args.seed)
                self.opts = [lowbit.Lion8bit(rest, lr=args.lion_lr, betas=betas, weight_decay=0.0, seed=args.seed)]
            else:
                self.qopt = QuantizedWeightOptimizer(self.model, rule="adamw", states="int8", fused=False,
                                                     lr=args.lr, betas=betas, weight_decay=0.0, seed=args.seed)
                self.opts = [lowbit.AdamW8bit(rest, lr=args.lr, betas=betas, weight_decay=0.0, seed=args.seed)]
        else:
            raise ValueError(name)

    def trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_lr(self, lr):
        for opt in self.opts:
            for g in opt.param_groups:
                if isinstance(g["lr"], self.torch.Tensor):  # torchao keeps lr as a tensor (torch.compile)
                    g["lr"].fill_(lr)
                else:
                    g["lr"] = lr
        if self.qopt is not None:
            self.qopt.optimizer.set_hparams(0, lr=lr)

    def clip_factor(self):
        """Global gradient-norm clipping over every gradient (the quantized
        layers' included), as the LLaMA trainer does."""
        torch = self.torch
        sq = torch.zeros((), dtype=torch.float64)
        for p in self.trainable():
            if p.grad is not None:
                sq += p.grad.double().pow(2).sum()
        if self.qopt is not None:
            for layer in self.qopt.layers:
                if layer.weight_grad is not None:
                    sq += layer.weight_grad.double().pow(2).sum()
        norm = math.sqrt(sq.item())
        return norm, (min(1.0, self.args.clip / (norm + 1e-6)) if self.args.clip > 0 else 1.0)

    def optimizer_step(self, factor):
        if factor != 1.0:
            for p in self.trainable():
                if p.grad is not None:
                    p.grad.mul_(factor)
        if self.qopt is not None:
            self.qopt.grad_scale = factor
            self.qopt.step()
        for opt in self.opts:
            opt.step()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)

    def weight_bytes(self):
        torch = self.torch
        total = sum(tensor_bytes(p.data if type(p) is torch.nn.Parameter else p, torch)
                    for p in self.model.parameters())
        if self.qopt is not None:
            for layer in self.qopt.layers:
                total += layer.weight_q.nbytes
        return total

    def state_bytes(self):
        torch = self.torch
        total = 0
        for opt in self.opts:
            if hasattr(opt, "lowbit") and opt.lowbit is not None:
                m = opt.lowbit.memory()
                total += m.state_bytes + m.master_bytes
                continue
            for st in opt.state.values():
                for v in st.values():
                    if isinstance(v, torch.Tensor) and v.dim() > 0:
                        total += tensor_bytes(v, torch)
        if self.qopt is not None:
            m = self.qopt.optimizer.memory()
            total += m.state_bytes + m.master_bytes
        return total


def train(run, data, args, torch, n_params, out):
    torch.manual_seed(args.seed)  # dropout-free model; torch's own random draws (torchao's rounding)
    data.restart()
    history, step_ms, opt_ms = [], [], []
    loss_value = float("nan")
    for step in range(1, args.steps + 1):
        run.set_lr(run.peak_lr * lr_factor(step, args))
        x, y = data.next_batch()
        t0 = time.perf_counter()
        loss = loss_of(run.model, torch, x, y)
        loss.backward()
        norm, factor = run.clip_factor()
        t1 = time.perf_counter()
        run.optimizer_step(factor)
        t2 = time.perf_counter()
        loss_value = loss.item()
        if step > 5:  # the first steps allocate states and compile (torchao)
            step_ms.append((t2 - t0) * 1e3)
            opt_ms.append((t2 - t1) * 1e3)
        if not math.isfinite(loss_value):
            print("  %s: loss not finite at step %d; stopping this configuration" % (run.name, step), file=out)
            break
        if step % args.eval_every == 0 or step == args.steps:
            val = evaluate(run.model, torch, data)
            history.append((step, val))
            print("  %-18s step %4d  train %.4f  val %.4f  grad norm %.3f  step %.1f ms" % (
                run.name, step, loss_value, val, norm, statistics.median(step_ms) if step_ms else float("nan")),
                file=out, flush=True)
    return {
        "config": run.name,
        "steps": step,
        "val": history,
        "final_val": history[-1][1] if history else float("nan"),
        "step_ms": statistics.median(step_ms) if step_ms else float("nan"),
        "optimizer_ms": statistics.median(opt_ms) if opt_ms else float("nan"),
        "weight_bytes_per_param": run.weight_bytes() / n_params,
        "state_bytes_per_param": run.state_bytes() / n_params,
    }


def main():
    args = parse_args()
    if args.threads:
        os.environ["LOWBIT_NUM_THREADS"] = str(args.threads)  # before lowbit's thread pool starts
    import torch
    import transformers
    if args.threads:
        torch.set_num_threads(args.threads)
    versions = ["torch %s" % torch.__version__, "transformers %s" % transformers.__version__]
    for mod in ("bitsandbytes", "torchao", "lowbit"):
        try:
            versions.append("%s %s" % (mod, getattr(__import__(mod), "__version__", "?")))
        except Exception as e:  # noqa: BLE001 (report any import failure)
            versions.append("%s missing (%s)" % (mod, type(e).__name__))
    out = sys.stdout
    print("; ".join(versions) + "; threads %d" % torch.get_num_threads(), file=out)
    data = Data(args.data, args.batch, args.seq, args.seed, torch)
    torch.manual_seed(args.seed)
    init_state = {k: v.clone() for k, v in make_model(torch, transformers).state_dict().items()}
    n_params = sum(v.numel() for k, v in init_state.items() if "rotary" not in k)
    print("model: %d parameters; %d steps of %d x %d tokens; eval every %d steps" % (
        n_params, args.steps, args.batch, args.seq, args.eval_every), file=out)
    print("initial validation loss %.4f" % evaluate(make_loaded(torch, transformers, init_state), torch, data),
          file=out)
    results = []
    for name in args.configs:
        try:
            run = Run(name, args, torch, transformers, init_state)
        except ImportError as e:
            print("  %-18s cannot run: %s" % (name, e), file=out)
            continue
        results.append(train(run, data, args, torch, n_params, out))
        del run
    base = next((r["final_val"] for r in results if r["config"] == "torch-adamw"), None)
    print("\n| configuration | final val loss | vs torch-adamw | step ms | optimizer ms | weights B/param "
          "| states B/param |", file=out)
    print("|---|---:|---:|---:|---:|---:|---:|", file=out)
    for r in results:
        rel = "%+.2f %%" % (100 * (r["final_val"] / base - 1)) if base else "-"
        print("| %s | %.4f | %s | %.1f | %.2f | %.3f | %.3f |" % (
            r["config"], r["final_val"], rel, r["step_ms"], r["optimizer_ms"], r["weight_bytes_per_param"],
            r["state_bytes_per_param"]), file=out)
    if args.jsonl:
        import json
        with open(args.jsonl, "a") as f:
            for r in results:
                f.write(json.dumps(dict(r, versions=versions, threads=torch.get_num_threads(),
                                        steps_requested=args.steps, seed=args.seed)) + "\n")


def make_loaded(torch, transformers, state):
    model = make_model(torch, transformers)
    model.load_state_dict(state)
    return model


if __name__ == "__main__":
    main()
