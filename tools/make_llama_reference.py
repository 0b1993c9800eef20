#!/usr/bin/env python3
"""Generate tiny random LLaMA checkpoints and reference outputs for lowbit's tests.

What it makes (under --out, normally tests/data/llama):

  tiny_gqa/                  2 layers, hidden 64, 4 query heads / 2 KV heads (GQA),
                             head_dim 16, rope_theta 1e4, separate lm_head.
      config.json, model.safetensors (float32), reference.safetensors
  tiny_llama3_rope/          as tiny_gqa's shape, with Llama 3.1 / 3.2 rotary scaling
                             (rope_parameters rope_type "llama3").
      config.json, model.safetensors (float32), reference.safetensors
  tiny_tied/                 1 layer, hidden 32, 4 query heads / 1 KV head (MQA),
                             head_dim 8, rope_theta 5e5, lm_head tied to embed_tokens.
      config.json, model.safetensors (float32), reference.safetensors
  tiny_gqa_bf16_sharded/     the tiny_gqa weights cast to bfloat16 and saved in several
                             shards (model-0000k-of-0000n.safetensors +
                             model.safetensors.index.json), plus reference.safetensors.
  README.md                  what is there, versions, conventions.

reference.safetensors of tiny_gqa / tiny_llama3_rope / tiny_tied holds
  input_ids      int64   [2, 24]   uniform in [0, 256), fixed generator
  logits_f32     float32 [2, 24, 256]  HF LlamaForCausalLM, float32, eager attention
  loss_f32       float32 [1]           HF loss with labels=input_ids (float32 model)
  logits_f64     float64 [2, 24, 256]  a straightforward float64 LLaMA forward written
                                       in this script (see `forward_f64`), checked
                                       against HF; every step is float64
  loss_f64       float64 [1]           mean next-token cross-entropy of logits_f64
                                       (positions 0..22 predict ids 1..23), float64
  logits_f64_hf  float64 [2, 24, 256]  HF model.double() output, for information: HF
                                       still computes RMSNorm, the RoPE cos/sin
                                       (inv_freq too) and the attention softmax in
                                       float32 even in a float64 model, so this is only
                                       float32-accurate.
  loss_f64_hf    float32 [1]           HF loss of the model.double() run; HF upcasts
                                       logits to float32 (!) before the cross-entropy,
                                       so this is a float32 number.
reference.safetensors of tiny_gqa_bf16_sharded holds input_ids (same as tiny_gqa),
logits_f64 / loss_f64 (bf16 weights converted exactly to float64, float64 forward) and
logits_f64_hf (HF model loaded from the shards, .double()).

Weights: after construction every parameter is re-drawn with a fixed torch generator:
2-D matrices (embeddings, projections, lm_head) ~ normal(0, 0.08); RMSNorm weights ~
uniform(0.5, 1.5) so that norm weights matter.  The weights are bit-reproducible for a
given torch version; logits_f32 may differ in the last bits between machines/BLAS builds.

Rerun (development only; transformers is never needed by the C++ tests):

    /tmp/venv/bin/pip install torch transformers safetensors
    /tmp/venv/bin/python tools/make_llama_reference.py --out tests/data/llama
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import transformers
from transformers import LlamaConfig, LlamaForCausalLM

BATCH, SEQ, VOCAB = 2, 24, 256

COMMON = dict(
    vocab_size=VOCAB,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    attention_bias=False,
    mlp_bias=False,
)

# tiny_gqa's shape, shared by tiny_llama3_rope
GQA_SHAPE = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

MODELS = {
    "tiny_gqa": dict(
        seed=1234,
        ids_seed=4321,
        cfg=dict(
            COMMON,
            **GQA_SHAPE,
            rope_theta=10000.0,
            tie_word_embeddings=False,
        ),
    ),
    "tiny_llama3_rope": dict(
        seed=2468,
        ids_seed=8642,
        cfg=dict(
            COMMON,
            **GQA_SHAPE,
            # Llama 3.1 / 3.2 rotary scaling with a small original context, so that
            # head_dim 16's eight frequencies fall in all three bands: wavelength
            # 2 pi under 64 / 8 (kept), 19.9 and 62.8 between (blended), the rest
            # over 64 (divided by the factor).
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=8.0,
                original_max_position_embeddings=64,
            ),
            tie_word_embeddings=False,
        ),
    ),
    "tiny_tied": dict(
        seed=5678,
        ids_seed=8765,
        cfg=dict(
            COMMON,
            hidden_size=32,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=1,
            rope_theta=500000.0,
            tie_word_embeddings=True,
        ),
    ),
}


# --------------------------------------------------------------------------------------
# Model construction / saving
# --------------------------------------------------------------------------------------


def build_model(cfg_kwargs: dict, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(**cfg_kwargs)
    model = LlamaForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.eval()

    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight, "weights not tied"

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters() de-duplicates tied parameters; sort for a fixed order.
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.08)
            elif p.dim() == 1 and name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=torch.float32))
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")
    return model


def patch_config_json(directory: str) -> None:
    """transformers 5 writes rope_theta only inside "rope_parameters"; older writers (and
    most checkpoints on the Hub) use a top-level "rope_theta".  Write both so either kind
    of reader works (they agree)."""
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rp:
        cfg["rope_theta"] = rp["rope_theta"]
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def save_model(model: LlamaForCausalLM, directory: str, **kwargs) -> None:
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    gen_cfg = os.path.join(directory, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)
    patch_config_json(directory)


def load_state_dict(directory: str) -> dict[str, torch.Tensor]:
    """Read all safetensors in a checkpoint folder (single file or index + shards)."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd: dict[str, torch.Tensor] = {}
    for fn in files:
        part = load_file(os.path.join(directory, fn))
        assert not (set(part) & set(sd)), "tensor in more than one shard"
        sd.update(part)
    return sd


# --------------------------------------------------------------------------------------
# Independent float64 reference forward (documents the conventions the C++ side follows)
# --------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_theta_of(cfg: dict) -> float:
    return cfg["rope_theta"] if "rope_theta" in cfg else cfg["rope_parameters"]["rope_theta"]


def rope_inv_freq(head_dim: int, cfg: dict, dtype=torch.float64) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/head_dim), i = 0 .. head_dim/2-1, then Llama 3's
    scaling when rope_parameters asks for it: by wavelength w = 2 pi / f against the
    original context L, f where w < L / high_freq_factor, f / factor where
    w > L / low_freq_factor, and (1 - s) f / factor + s f in between (bounds
    included), s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)."""
    i = torch.arange(head_dim // 2, dtype=dtype)
    inv_freq = rope_theta_of(cfg) ** (-(2.0 * i) / head_dim)
    rp = cfg.get("rope_parameters") or {}
    if rp.get("rope_type", "default") == "llama3":
        factor, low, high = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        L = rp["original_max_position_embeddings"]
        w = 2 * math.pi / inv_freq
        s = (L / w - low) / (high - low)
        blended = (1 - s) * inv_freq / factor + s * inv_freq
        inv_freq = torch.where(w < L / high, inv_freq, torch.where(w > L / low, inv_freq / factor, blended))
    return inv_freq


def rope_tables(head_dim: int, cfg: dict, seq: int, dtype=torch.float64):
    """angle = pos * inv_freq (rope_inv_freq)."""
    inv_freq = rope_inv_freq(head_dim, cfg, dtype)
    ang = torch.arange(seq, dtype=dtype)[:, None] * inv_freq[None, :]  # [T, d/2]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved=False):
    """x: [B, heads, T, d].  HF ("rotate_half") convention: dim i is paired with dim
    i + d/2 and the pair is rotated by angle pos*inv_freq[i].  interleaved=True gives the
    other common convention (pairs (2i, 2i+1), as in Meta's original code) - used only to
    show that the test data distinguishes the two."""
    d = x.shape[-1]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        ra, rb = a * cos - b * sin, a * sin + b * cos
        return torch.stack((ra, rb), dim=-1).flatten(-2)
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def forward_f64(sd: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, interleaved=False):
    sd = {k: v.to(torch.float64) for k, v in sd.items()}
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden = cfg["hidden_size"]
    d = hidden // H
    eps = cfg["rms_norm_eps"]
    B, T = ids.shape
    cos, sin = rope_tables(d, cfg, T)

    x = sd["model.embed_tokens.weight"][ids]  # [B, T, hidden]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(B, T, H, d).transpose(1, 2)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(B, T, KV, d).transpose(1, 2)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(B, T, KV, d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin, interleaved), apply_rope(k, cos, sin, interleaved)
        # query head j uses KV head j // (H/KV)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        s = s.masked_fill(~causal, float("-inf"))
        a = torch.softmax(s, dim=-1) @ v  # [B, H, T, d]
        a = a.transpose(1, 2).reshape(B, T, H * d)
        x = x + a @ sd[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        g = h @ sd[p + "mlp.gate_proj.weight"].T
        u = h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ sd[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, sd["model.norm.weight"], eps)
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return x @ head.T


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


# --------------------------------------------------------------------------------------
# Checks of HF conventions
# --------------------------------------------------------------------------------------


def check_hf_conventions(model: LlamaForCausalLM, cfg: dict) -> None:
    from transformers.models.llama import modeling_llama as ml

    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    # inv_freq = theta^(-2i/d), with Llama 3's scaling where configured
    inv = model.model.rotary_emb.inv_freq.double()
    ref = rope_inv_freq(d, cfg)
    assert torch.allclose(inv, ref, rtol=1e-6, atol=0), (inv, ref)
    plain = rope_theta_of(cfg) ** (-(2.0 * torch.arange(d // 2, dtype=torch.float64)) / d)
    if (cfg.get("rope_parameters") or {}).get("rope_type") == "llama3":
        # all three bands present: kept, blended, divided by the factor
        factor = cfg["rope_parameters"]["factor"]
        kept = torch.isclose(ref, plain, rtol=1e-12, atol=0)
        divided = torch.isclose(ref, plain / factor, rtol=1e-12, atol=0)
        assert kept.any() and divided.any() and (~kept & ~divided).any(), (ref, plain)
    # rotate_half pairs dim i with i + d/2
    x = torch.arange(d, dtype=torch.float64)
    rh = ml.rotate_half(x)
    assert torch.equal(rh, torch.cat((-x[d // 2 :], x[: d // 2]))), rh
    # RMSNorm = x * rsqrt(mean(x^2) + eps) * w
    n = model.model.norm
    xx = torch.randn(3, cfg["hidden_size"], generator=torch.Generator().manual_seed(0))
    got = n(xx)
    want = rms_norm(xx.double(), n.weight.double(), cfg["rms_norm_eps"])
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def make_ids(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)


@torch.no_grad()
def hf_run(model: LlamaForCausalLM, ids: torch.Tensor):
    out = model(input_ids=ids, labels=ids)
    return out.logits, out.loss


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/data/llama")
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS), default=None,
                    help="make only these folders (default: all; tiny_gqa also makes tiny_gqa_bf16_sharded)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    summary = []
    gqa_ids = None
    for name, spec in MODELS.items():
        if args.only is not None and name not in args.only:
            continue
        cfg = spec["cfg"]
        model = build_model(cfg, spec["seed"])
        check_hf_conventions(model, cfg)
        mdir = os.path.join(args.out, name)
        save_model(model, mdir)

        # Reference values are computed from the model as reloaded from disk.
        sd = load_state_dict(mdir)
        if cfg["tie_word_embeddings"]:
            assert "lm_head.weight" not in sd, "tied lm_head was saved"
        assert all(t.dtype == torch.float32 for t in sd.values())
        m32 = LlamaForCausalLM.from_pretrained(mdir, attn_implementation="eager", dtype=torch.float32).eval()
        for k, v in model.state_dict().items():
            assert torch.equal(m32.state_dict()[k], v), k

        ids = make_ids(spec["ids_seed"])
        logits32, loss32 = hf_run(m32, ids)
        m64 = copy.deepcopy(m32).double()
        logits64_hf, loss64_hf = hf_run(m64, ids)
        logits64 = forward_f64(sd, cfg, ids)
        loss64 = next_token_loss(logits64, ids)

        # Our float64 forward must agree with HF to float32 accuracy, and the other
        # RoPE convention must not.
        d_hf64 = maxdiff(logits64, logits64_hf)
        d_32 = maxdiff(logits64, logits32)
        d_inter = maxdiff(forward_f64(sd, cfg, ids, interleaved=True), logits64)
        assert d_hf64 < 1e-4 and d_32 < 1e-4, (d_hf64, d_32)
        assert d_inter > 1e-2, d_inter
        assert abs(loss64.item() - loss32.item()) < 1e-4

        save_file(
            {
                "input_ids": ids.contiguous(),
                "logits_f32": logits32.float().contiguous(),
                "loss_f32": loss32.float().reshape(1),
                "logits_f64": logits64.contiguous(),
                "loss_f64": loss64.reshape(1),
                "logits_f64_hf": logits64_hf.double().contiguous(),
                "loss_f64_hf": loss64_hf.reshape(1),
            },
            os.path.join(mdir, "reference.safetensors"),
        )
        summary.append(
            f"{name}: loss_f64={loss64.item():.12f} loss_f32={loss32.item():.8f} "
            f"loss_f64_hf={loss64_hf.item():.8f} (dtype {loss64_hf.dtype})\n"
            f"    max|logits_f32-logits_f64|={d_32:.3e}  max|logits_f64_hf-logits_f64|={d_hf64:.3e}  "
            f"max|logits_f64|={logits64.abs().max().item():.3f}  "
            f"interleaved-RoPE max diff={d_inter:.3e}"
        )

        if name == "tiny_gqa":
            gqa_ids = ids
            bdir = os.path.join(args.out, "tiny_gqa_bf16_sharded")
            mbf = copy.deepcopy(m32).to(torch.bfloat16)
            save_model(mbf, bdir, max_shard_size="100KB")
            assert os.path.exists(os.path.join(bdir, "model.safetensors.index.json")), "not sharded"
            shards = [f for f in os.listdir(bdir) if f.startswith("model-") and f.endswith(".safetensors")]
            assert len(shards) >= 2, shards
            sdb = load_state_dict(bdir)
            assert set(sdb) == set(sd)
            assert all(t.dtype == torch.bfloat16 for t in sdb.values())
            lb64 = forward_f64(sdb, cfg, gqa_ids)
            lossb64 = next_token_loss(lb64, gqa_ids)
            mb = LlamaForCausalLM.from_pretrained(bdir, attn_implementation="eager", dtype=torch.bfloat16)
            mb64 = mb.eval().double()
            lb64_hf, _ = hf_run(mb64, gqa_ids)
            db = maxdiff(lb64, lb64_hf)
            assert db < 1e-4, db
            save_file(
                {
                    "input_ids": gqa_ids.contiguous(),
                    "logits_f64": lb64.contiguous(),
                    "loss_f64": lossb64.reshape(1),
                    "logits_f64_hf": lb64_hf.double().contiguous(),
                },
                os.path.join(bdir, "reference.safetensors"),
            )
            summary.append(
                f"tiny_gqa_bf16_sharded: {len(shards)} shards, loss_f64={lossb64.item():.12f}  "
                f"max|bf16 - f32-weights logits|={maxdiff(lb64, logits64):.3e}  "
                f"max|logits_f64_hf-logits_f64|={db:.3e}"
            )

    write_readme(args.out)
    total = 0
    for root, _, files in os.walk(args.out):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            total += os.path.getsize(p)
            print(f"{os.path.getsize(p):>9}  {p}")
    print(f"{total:>9}  total bytes")
    print("\n".join(summary))
    return 0


README = """\
# Tiny LLaMA test checkpoints

Generated by `tools/make_llama_reference.py` (transformers {tf}, torch {pt},
safetensors {st}); the C++ tests only read these files. Regenerate with

    /tmp/venv/bin/python tools/make_llama_reference.py --out tests/data/llama

| folder | layers | hidden | inter | heads / kv heads | head_dim | rope_theta | lm_head |
|---|---|---|---|---|---|---|---|
| `tiny_gqa/` | 2 | 64 | 176 | 4 / 2 | 16 | 10000 | separate |
| `tiny_tied/` | 1 | 32 | 96 | 4 / 1 | 8 | 500000 | tied to embed_tokens |
| `tiny_llama3_rope/` | 2 | 64 | 176 | 4 / 2 | 16 | 10000, Llama 3 scaling (factor 8, low / high freq factors 1 / 8, original context 64) | separate |
| `tiny_gqa_bf16_sharded/` | tiny_gqa weights cast to bfloat16, saved as shards + `model.safetensors.index.json` |

All: vocab 256, rms_norm_eps 1e-5, no biases, SiLU MLP, float32 weights (except the bf16
copy). Weights are random: matrices ~ N(0, 0.08^2), RMSNorm weights ~ U(0.5, 1.5).
`config.json` is as transformers 5 writes it (`rope_parameters.rope_theta`) plus a
top-level `rope_theta` with the same value, as older checkpoints have it.

`reference.safetensors` (per folder): `input_ids` int64 [2,24]; `logits_f32` float32
[2,24,256] and `loss_f32` [1] from HF in float32 (eager attention); `logits_f64` float64
and `loss_f64` float64 [1] from a plain float64 forward in the script (checked against
HF); `logits_f64_hf` = HF `model.double()` logits and `loss_f64_hf` its loss. Note that HF
is only float32-accurate even for a float64 model: it computes RMSNorm, RoPE cos/sin and
the attention softmax in float32, and upcasts logits to float32 for the loss. Compare
against `logits_f64`. The loss is the mean cross-entropy over the 2*23 next-token
predictions (position t predicts input_ids[t+1]). The bf16 folder has `input_ids`
(same as tiny_gqa), `logits_f64`, `loss_f64` computed from the bf16 weights
converted exactly to float64, and `logits_f64_hf`.

## Weight names and shapes (PyTorch `nn.Linear` layout: [out, in], y = x W^T)

- `model.embed_tokens.weight` [vocab, hidden]
- `model.layers.L.input_layernorm.weight` [hidden]
- `model.layers.L.self_attn.q_proj.weight` [n_heads*head_dim, hidden]
- `model.layers.L.self_attn.k_proj.weight`, `v_proj.weight` [n_kv_heads*head_dim, hidden]
- `model.layers.L.self_attn.o_proj.weight` [hidden, n_heads*head_dim]
- `model.layers.L.post_attention_layernorm.weight` [hidden]
- `model.layers.L.mlp.gate_proj.weight`, `up_proj.weight` [intermediate, hidden]
- `model.layers.L.mlp.down_proj.weight` [hidden, intermediate]
- `model.norm.weight` [hidden]
- `lm_head.weight` [vocab, hidden] -- absent when `tie_word_embeddings` (use embed_tokens)

## Conventions (checked by the script against transformers)

- Block: `x += o_proj(attn(rope(q), rope(k), v))` on `input_layernorm(x)`, then
  `x += down_proj(silu(gate_proj(h)) * up_proj(h))` with `h = post_attention_layernorm(x)`;
  final `model.norm`, then `lm_head`.
- RMSNorm: `y = x * rsqrt(mean(x^2) + eps) * weight` (HF does the normalisation in
  float32, then multiplies by weight).
- RoPE ("rotate_half", non-interleaved): within each head, dim `i` is paired with dim
  `i + head_dim/2`, `inv_freq[i] = theta^(-2i/head_dim)` for `i < head_dim/2` (Llama 3
  scaling, in `tiny_llama3_rope`: by wavelength `w = 2 pi / f` against the original
  context `L`, `f` kept where `w < L / high_freq_factor`, `f / factor` where
  `w > L / low_freq_factor`, `(1 - s) f / factor + s f` between, with
  `s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)`), angle
  `a = pos * inv_freq[i]`:
  `y[i] = x[i] cos a - x[i+d/2] sin a`, `y[i+d/2] = x[i+d/2] cos a + x[i] sin a`.
  Applied to q and k, positions 0..T-1. (The interleaved (2i, 2i+1) pairing gives
  clearly different logits on these files.)
- Attention: scores `q.k / sqrt(head_dim)`, causal mask, softmax; GQA: query head `j`
  uses KV head `j / (n_heads / n_kv_heads)` (integer division).
- Query heads are contiguous slices of q_proj's output: head `j` = rows
  `[j*head_dim, (j+1)*head_dim)`; same for k/v with KV heads.
"""


def write_readme(out: str) -> None:
    import safetensors

    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(README.format(tf=transformers.__version__, pt=torch.__version__, st=safetensors.__version__))


if __name__ == "__main__":
    sys.exit(main())
