#!/usr/bin/env python3
"""PyTorch peer for the LLaMA trainer's speed and memory figures.

Trains a randomly initialised LLaMA model (one of llama_train's presets, see
examples/llama/config.hpp, or a Hugging Face config.json) in plain bf16 with
torch.optim.AdamW(fused=True) on random token batches, and reports tokens/s,
ms/step, model FLOPs utilisation (MFU) and peak memory, as a line of text and
optionally one JSON object (--json FILE).

The model is transformers' LlamaForCausalLM (sdpa attention) when transformers
is importable, else a small self-contained LLaMA in this file (RMSNorm, RoPE
rotate-half, grouped-query attention through
torch.nn.functional.scaled_dot_product_attention(is_causal=True), SwiGLU) with
the same parameters; --impl picks one, and the output says which ran.

Training step (what is timed): forward, next-token cross-entropy (labels =
input_ids, shifted), backward, global gradient-norm clip (--clip, default 1.0
as in llama_train; 0 = off), AdamW step (betas 0.9 / 0.95, weight decay 0, as
llama_train's defaults; lr 1e-4), zero_grad. Weights, gradients and AdamW
states are all bf16 (no fp32 master copy). --warmup untimed steps, then --steps
timed ones between torch.cuda.synchronize() calls with time.perf_counter().

Model FLOPs per token (PaLM appendix B / nanoGPT estimate_mfu convention):
    6 * n_params + 12 * n_layers * seq * dim
(n_params as llama_train counts them: every parameter once, a tied head once;
the second term is attention's QK^T and AV over the full sequence, forward and
backward, not halved for the causal mask; recomputation under --checkpointing
is not counted). MFU = FLOPs/token * tokens/s / (--peak-tflops * 1e12); the
default 989.4 TFLOP/s is the H100 SXM dense bf16 peak, as llama_train --peak-tflops.

Memory: torch.cuda.max_memory_allocated() and max_memory_reserved() over the
whole run (weights, gradients, optimizer states, activations; the CUDA context
is not included), reset before the model is built.

Development-only: torch and transformers are never dependencies of lowbit.
Examples (see docs/PERFORMANCE.md, "LLaMA trainer (CUDA)"):
    python3 bench/llama_torch_peer.py --preset llama3.2-1b --json peer-1b.json
    python3 bench/llama_torch_peer.py --device cpu --preset tiny --steps 2 --warmup 1
    python3 bench/llama_torch_peer.py --count-only --preset llama2-7b
"""
import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time


# --- model configuration: the presets of examples/llama/config.hpp ----------

@dataclasses.dataclass
class LlamaShape:
    vocab_size: int = 256
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dim: int = 352
    max_seq_len: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tied_embeddings: bool = False

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def kv_dim(self):
        return self.n_kv_heads * self.head_dim

    def layer_params(self):  # llama_config::layer_params
        d = self.dim
        return 2 * d + d * d + 2 * d * self.kv_dim + d * d + 3 * d * self.hidden_dim

    def n_params(self):  # llama_config::n_params
        return (self.n_layers * self.layer_params()
                + self.vocab_size * self.dim * (1 if self.tied_embeddings else 2) + self.dim)

    def validate(self, source):
        def need(ok, msg):
            if not ok:
                raise ValueError(f"{source}: {msg}")
        need(self.vocab_size > 0, "vocab_size must be > 0")
        need(min(self.dim, self.n_layers, self.n_heads, self.n_kv_heads, self.hidden_dim, self.max_seq_len) > 0,
             "dim, n_layers, n_heads, n_kv_heads, hidden_dim and max_seq_len must be > 0")
        need(self.dim % self.n_heads == 0, f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        need(self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be even for rotary embeddings")
        need(self.n_kv_heads <= self.n_heads and self.n_heads % self.n_kv_heads == 0,
             f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        need(self.norm_eps > 0, "norm_eps must be > 0")
        need(self.rope_theta > 1, "rope_theta must be > 1")

    def summary(self):
        return (f"dim {self.dim}, {self.n_layers} layers, {self.n_heads} heads ({self.n_kv_heads} kv), "
                f"ffn {self.hidden_dim}, vocab {self.vocab_size}{', tied head' if self.tied_embeddings else ''}, "
                f"rope theta {self.rope_theta:g}, {self.n_params()} parameters")


# Keep in step with llama_config::preset (examples/llama/config.hpp). The
# trainer's llama3.2-1b preset also carries Llama 3's rotary frequency
# scaling; this peer keeps plain rotary frequencies, which change the
# values of the rotation tables but none of the work or memory it measures.
PRESETS = {
    "tiny": LlamaShape(),
    "llama2-7b": LlamaShape(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                            hidden_dim=11008, max_seq_len=4096, norm_eps=1e-5, rope_theta=10000.0),
    "llama3.2-1b": LlamaShape(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                              hidden_dim=8192, max_seq_len=131072, norm_eps=1e-5, rope_theta=500000.0,
                              tied_embeddings=True),
    "tinyllama-1.1b": LlamaShape(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                                 hidden_dim=5632, max_seq_len=2048, norm_eps=1e-5, rope_theta=10000.0),
}


def shape_from_hf_json(path):
    """A Hugging Face LlamaConfig config.json, with llama_config::from_hf_json's rules."""
    try:
        with open(path) as f:
            j = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot open model config '{path}': {e.strerror}")
    except json.JSONDecodeError as e:
        raise ValueError(f"'{path}' is not valid JSON: {e}")
    if not isinstance(j, dict):
        raise ValueError(f"{path}: not a JSON object")

    def fail(msg):
        raise ValueError(f"{path}: {msg}")

    def get_int(key, required, fallback):
        if j.get(key) is None:
            if required:
                fail(f"lacks '{key}'")
            return fallback
        if not isinstance(j[key], int) or isinstance(j[key], bool):
            fail(f"'{key}' must be an integer")
        return j[key]

    def get_float(key, fallback):
        if j.get(key) is None:
            return fallback
        if not isinstance(j[key], (int, float)) or isinstance(j[key], bool):
            fail(f"'{key}' must be a number")
        return float(j[key])

    if "model_type" in j and j["model_type"] != "llama":
        fail(f"model_type is {json.dumps(j['model_type'])}, only \"llama\" is supported")
    if "hidden_act" in j and j["hidden_act"] != "silu":
        fail(f"hidden_act is {json.dumps(j['hidden_act'])}, only \"silu\" (SwiGLU) is supported")
    for key in ("attention_bias", "mlp_bias"):
        if j.get(key) is True:
            fail(f"{key} = true is not supported (LLaMA has no biases)")
    theta = get_float("rope_theta", 10000.0)
    for key in ("rope_scaling", "rope_parameters"):
        r = j.get(key)
        if r is None:
            continue
        if not isinstance(r, dict):
            fail(f"'{key}' must be an object")
        rtype = r.get("rope_type", r.get("type", "default"))
        if rtype != "default":
            fail(f"{key} rope_type '{rtype}' is not supported (only plain rotary embeddings)")
        if isinstance(r.get("rope_theta"), (int, float)):
            theta = float(r["rope_theta"])
    c = LlamaShape(
        vocab_size=get_int("vocab_size", True, 0),
        dim=get_int("hidden_size", True, 0),
        n_layers=get_int("num_hidden_layers", True, 0),
        n_heads=get_int("num_attention_heads", True, 0),
        hidden_dim=get_int("intermediate_size", True, 0),
        max_seq_len=get_int("max_position_embeddings", False, 2048),
        norm_eps=get_float("rms_norm_eps", 1e-6),
        rope_theta=theta,
        tied_embeddings=bool(j.get("tie_word_embeddings", False)),
    )
    c.n_kv_heads = get_int("num_key_value_heads", False, c.n_heads)
    if isinstance(j.get("head_dim"), int) and c.n_heads > 0 and j["head_dim"] != c.dim // c.n_heads:
        fail("head_dim != hidden_size / num_attention_heads is not supported")
    c.validate(path)
    return c


# --- the plain PyTorch LLaMA (used when transformers is absent or --impl plain) ---

def make_plain_model_classes(torch):
    nn = torch.nn
    F = torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):  # in float32, as transformers does
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * h.to(x.dtype)

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
            self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
            self.k_proj = nn.Linear(c.dim, c.kv_dim, bias=False)
            self.v_proj = nn.Linear(c.dim, c.kv_dim, bias=False)
            self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if self.n_kv_heads != self.n_heads:  # grouped-query attention: share each kv head
                rep = self.n_heads // self.n_kv_heads
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    class MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.gate_proj = nn.Linear(c.dim, c.hidden_dim, bias=False)
            self.up_proj = nn.Linear(c.dim, c.hidden_dim, bias=False)
            self.down_proj = nn.Linear(c.hidden_dim, c.dim, bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.input_layernorm = RMSNorm(c.dim, c.norm_eps)
            self.self_attn = Attention(c)
            self.post_attention_layernorm = RMSNorm(c.dim, c.norm_eps)
            self.mlp = MLP(c)

        def forward(self, x, cos, sin):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Backbone(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.embed_tokens = nn.Embedding(c.vocab_size, c.dim)
            self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
            self.norm = RMSNorm(c.dim, c.norm_eps)

    class PlainLlama(nn.Module):
        """Hugging Face parameter names (model.layers.N.self_attn.q_proj.weight, ...)."""

        def __init__(self, c):
            super().__init__()
            self.c = c
            self.model = Backbone(c)
            self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=False)
            for m in self.modules():  # transformers' LLaMA init: normal(0, 0.02), norms 1
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if c.tied_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
            self.gradient_checkpointing = False

        def rope(self, T, device, dtype):
            hd = self.c.head_dim
            inv_freq = 1.0 / (self.c.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
            freqs = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(dtype), emb.sin().to(dtype)

        def forward(self, input_ids, labels):
            x = self.model.embed_tokens(input_ids)
            cos, sin = self.rope(input_ids.shape[1], x.device, x.dtype)
            for layer in self.model.layers:
                if self.gradient_checkpointing and self.training:
                    x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
                else:
                    x = layer(x, cos, sin)
            logits = self.lm_head(self.model.norm(x))
            # next-token loss in float32, as transformers' ForCausalLMLoss
            return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    return PlainLlama


# --- building ---------------------------------------------------------------

def hf_rope_theta(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(getattr(cfg, "rope_theta", float("nan")))


def hf_config(transformers, c):
    common = dict(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
        hidden_act="silu", max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tied_embeddings, attention_bias=False, mlp_bias=False, use_cache=False,
        attn_implementation="sdpa")
    # rope_theta: transformers 4 keeps it as is, 5 moves it into rope_parameters
    # (and takes rope_parameters directly); check which one took.
    for rope in ({"rope_theta": c.rope_theta},
                 {"rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}}):
        cfg = transformers.LlamaConfig(**common, **rope)
        if math.isclose(hf_rope_theta(cfg), c.rope_theta, rel_tol=1e-6):
            return cfg
    raise RuntimeError(f"transformers {transformers.__version__} LlamaConfig keeps rope theta "
                       f"{hf_rope_theta(cfg)}, not {c.rope_theta}")


def build_model(torch, impl, c, device, dtype):
    """The model on `device` (a torch.device, 'meta' included) with `dtype` parameters."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype; no float32 copy first
    try:
        with torch.device(device):
            if impl == "transformers":
                import transformers
                model = transformers.LlamaForCausalLM(hf_config(transformers, c))
            else:
                model = make_plain_model_classes(torch)(c)
    finally:
        torch.set_default_dtype(old)
    return model


def count_params(model):
    return sum(p.numel() for p in model.parameters())  # parameters() lists a tied tensor once


def resolve_impl(requested):
    """('transformers' | 'plain', transformers module or None, note)."""
    if requested == "plain":
        return "plain", None, "plain PyTorch LLaMA (this file), --impl plain"
    try:
        import transformers
    except ImportError as e:
        if requested == "transformers":
            sys.exit(f"llama_torch_peer: --impl transformers, but transformers is not importable ({e})")
        return "plain", None, f"plain PyTorch LLaMA (this file): transformers is not importable ({e})"
    return "transformers", transformers, f"transformers {transformers.__version__} LlamaForCausalLM"


# --- main -----------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="PyTorch bf16 + fused AdamW peer for llama_train's speed and memory figures.",
        epilog="Model FLOPs per token = 6 * n_params + 12 * n_layers * seq * dim (PaLM / nanoGPT MFU convention).")
    m = ap.add_argument_group("model")
    m.add_argument("--preset", default=None,
                   help=f"{', '.join(PRESETS)} (default: llama3.2-1b on cuda, tiny on cpu)")
    m.add_argument("--config", default=None, help="Hugging Face config.json instead of a preset (random init)")
    m.add_argument("--impl", choices=("auto", "transformers", "plain"), default="auto",
                   help="auto (default): transformers' LlamaForCausalLM when importable, else the plain model")
    m.add_argument("--count-only", action="store_true",
                   help="build on the meta device, compare the parameter count with llama_train's formula, exit")
    t = ap.add_argument_group("training")
    t.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (smoke check)")
    t.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    t.add_argument("--seq", type=int, default=None,
                   help="tokens per sequence (default 512, or the model's max_seq_len if smaller)")
    t.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    t.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    t.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip, 0 = off (default 1.0)")
    t.add_argument("--checkpointing", action="store_true", help="gradient (activation) checkpointing per layer")
    t.add_argument("--seed", type=int, default=1337)
    o = ap.add_argument_group("output")
    o.add_argument("--peak-tflops", type=float, default=989.4,
                   help="the GPU's dense bf16 peak for MFU (default 989.4: H100 SXM, as llama_train)")
    o.add_argument("--json", default=None, metavar="FILE", help="write the result as one JSON object")
    o.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap.parse_args(argv)


def fail(msg):
    sys.exit(f"llama_torch_peer: {msg}")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    for name in ("batch", "steps"):
        if getattr(args, name) <= 0:
            fail(f"--{name} must be > 0")
    if args.warmup < 0:
        fail("--warmup must be >= 0")
    if args.seq is not None and args.seq < 2:
        fail("--seq must be >= 2 (next-token loss)")
    if args.peak_tflops <= 0:
        fail("--peak-tflops must be > 0")

    # Model shape first: no torch needed to reject a bad preset or config.
    if args.config and args.preset:
        fail("--config and --preset both give the model; use one")
    is_cpu = args.device == "cpu"
    if args.config:
        try:
            shape = shape_from_hf_json(args.config)
        except ValueError as e:
            fail(str(e))
        model_name = args.config
    else:
        model_name = args.preset or ("tiny" if is_cpu else "llama3.2-1b")
        if model_name not in PRESETS:
            fail(f"unknown preset '{model_name}' ({', '.join(PRESETS)})")
        shape = dataclasses.replace(PRESETS[model_name])
    formula = shape.n_params()

    try:
        import torch
    except ImportError as e:
        fail(f"PyTorch is not importable ({e}); run with a Python that has torch (development only, "
             "never a dependency of lowbit)")
    if args.threads:
        torch.set_num_threads(args.threads)
    impl, transformers, impl_note = resolve_impl(args.impl)
    print(f"llama_torch_peer: model {model_name}: {shape.summary()}")
    print(f"llama_torch_peer: implementation: {impl_note}; torch {torch.__version__}")

    if args.count_only:
        model = build_model(torch, impl, shape, torch.device("meta"), torch.bfloat16)
        n = count_params(model)
        print(f"llama_torch_peer: {model_name}: {n} parameters built on the meta device ({impl}), "
              f"llama_train's formula {formula}: {'equal' if n == formula else 'DIFFERENT'}")
        return 0 if n == formula else 1

    # Device.
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        fail(f"--device {args.device}: {e}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"this torch {torch.__version__} has no CUDA support" if torch.version.cuda is None
                   else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU")
            fail(f"--device {args.device} requested but CUDA is not available: {why}; "
                 "use --device cpu (tiny preset) for a smoke check")
        if device.index is not None and device.index >= torch.cuda.device_count():
            fail(f"--device {args.device}: only {torch.cuda.device_count()} GPU(s) visible")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        fail(f"--device {args.device}: only cuda[:N] and cpu are supported")
    on_gpu = device.type == "cuda"

    seq_note = ""
    if args.seq is None:
        seq = min(512, shape.max_seq_len)
        if seq != 512:
            seq_note = f" (the model's max_seq_len; default 512)"
    else:
        seq = args.seq
        if seq > shape.max_seq_len:
            fail(f"--seq {seq} exceeds the model's max_seq_len {shape.max_seq_len}")
    tokens_per_step = args.batch * seq

    def sync():
        if on_gpu:
            torch.cuda.synchronize(device)

    torch.manual_seed(args.seed)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    dtype = torch.bfloat16
    model = build_model(torch, impl, shape, device, dtype)
    n_params = count_params(model)
    if n_params != formula:
        fail(f"the built model has {n_params} parameters, llama_train's formula gives {formula}")
    bad = sorted({str(p.dtype) for p in model.parameters() if p.dtype != dtype})
    if bad:
        fail(f"parameters in {bad}, expected {dtype}")
    if args.checkpointing:
        if impl == "transformers":  # transformers 5.x renamed it; 4.x has only the old name
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing = True
    model.train()
    attn = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") if impl == "transformers" else "sdpa"

    try:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                                fused=True)
    except (RuntimeError, ValueError) as e:
        fail(f"torch.optim.AdamW(fused=True) is not available here: {e}")

    gen = torch.Generator(device=device).manual_seed(args.seed)
    total = args.warmup + args.steps
    batches = [torch.randint(0, shape.vocab_size, (args.batch, seq), device=device, generator=gen)
               for _ in range(total)]

    def step(ids):
        if impl == "transformers":
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        else:
            loss = model(ids, ids)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    losses = []
    for i in range(args.warmup):
        losses.append(step(batches[i]))
    sync()
    t0 = time.perf_counter()
    for i in range(args.warmup, total):
        losses.append(step(batches[i]))
    sync()
    elapsed = time.perf_counter() - t0
    losses = [float(x) for x in losses]
    if not all(math.isfinite(x) for x in losses):
        fail(f"non-finite training loss: {losses}")

    ms_per_step = elapsed / args.steps * 1e3
    tokens_per_s = tokens_per_step * args.steps / elapsed
    # Model FLOPs per token, PaLM / nanoGPT convention:
    #   6 * n_params (forward 2N + backward 4N multiply-adds) + 12 * n_layers * seq * dim (attention scores
    #   and weighted sum, forward + backward, full sequence). Recomputation (--checkpointing) is not counted.
    flops_per_token = 6 * n_params + 12 * shape.n_layers * seq * shape.dim
    achieved_tflops = flops_per_token * tokens_per_s / 1e12
    mfu = achieved_tflops / args.peak_tflops if on_gpu else None

    if on_gpu:
        gib = float(1 << 30)
        peak_alloc = torch.cuda.max_memory_allocated(device) / gib
        peak_reserved = torch.cuda.max_memory_reserved(device) / gib
        free, total_mem = torch.cuda.mem_get_info(device)
        device_used = (total_mem - free) / gib
        gpu_name = torch.cuda.get_device_name(device)
        cpu_rss = None
    else:
        peak_alloc = peak_reserved = device_used = None
        gpu_name = None
        import resource
        cpu_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 / 1024.0  # KiB -> GiB (Linux)

    flops_formula = "6 * n_params + 12 * n_layers * seq * dim"
    where = f"GPU {gpu_name}" if on_gpu else f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)"
    print(f"llama_torch_peer: {where}; "
          f"bf16 weights, gradients and AdamW states (fused=True, lr {args.lr:g}, clip {args.clip:g}); "
          f"attention {attn}{'; gradient checkpointing' if args.checkpointing else ''}")
    print(f"llama_torch_peer: batch {args.batch} x seq {seq}{seq_note} = {tokens_per_step} tokens/step, "
          f"{args.warmup} warmup + {args.steps} timed steps; loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"llama_torch_peer: model FLOPs/token = {flops_formula} = {flops_per_token:.4g} "
          f"(PaLM / nanoGPT MFU convention)")
    if on_gpu:
        print(f"llama_torch_peer: MFU against {args.peak_tflops:g} TFLOP/s dense bf16 "
              f"({'the H100 SXM peak, assumed' if args.peak_tflops == 989.4 else '--peak-tflops'}; "
              f"pass --peak-tflops for another GPU)")
        print(f"RESULT {model_name} [{impl}]: {n_params} params, {tokens_per_s:.1f} tokens/s, "
              f"{ms_per_step:.2f} ms/step, {achieved_tflops:.1f} TFLOP/s, MFU {mfu * 100:.1f}%, "
              f"peak memory {peak_alloc:.2f} GiB allocated / {peak_reserved:.2f} GiB reserved")
    else:
        print(f"RESULT {model_name} [{impl}]: {n_params} params, {tokens_per_s:.1f} tokens/s, "
              f"{ms_per_step:.2f} ms/step, {achieved_tflops * 1e3:.2f} GFLOP/s, MFU n/a on CPU, "
              f"peak resident memory {cpu_rss:.3f} GiB (smoke check)")

    result = {
        "tool": "bench/llama_torch_peer.py",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model_name,
        "model_config": dataclasses.asdict(shape),
        "impl": impl,
        "attention": attn,
        "n_params": n_params,
        "n_params_formula": formula,
        "dtype": "bfloat16",
        "optimizer": {"name": "torch.optim.AdamW", "fused": True, "lr": args.lr, "betas": [0.9, 0.95],
                      "eps": 1e-8, "weight_decay": 0.0, "clip": args.clip},
        "checkpointing": args.checkpointing,
        "batch": args.batch,
        "seq": seq,
        "tokens_per_step": tokens_per_step,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "tokens_per_s": tokens_per_s,
        "ms_per_step": ms_per_step,
        "flops_per_token": flops_per_token,
        "flops_formula": flops_formula + " (PaLM / nanoGPT MFU convention; recomputation not counted)",
        "achieved_tflops": achieved_tflops,
        "peak_tflops": args.peak_tflops if on_gpu else None,
        "mfu": mfu,
        "peak_memory_allocated_gib": peak_alloc,
        "peak_memory_reserved_gib": peak_reserved,
        "device_memory_used_gib_at_end": device_used,
        "cpu_peak_rss_gib": cpu_rss,
        "device": str(device),
        "gpu_name": gpu_name,
        "cpu_name": None if on_gpu else cpu_name(),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "transformers_version": transformers.__version__ if transformers is not None else None,
        "python_version": platform.python_version(),
        "host": platform.node(),
    }
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"llama_torch_peer: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
