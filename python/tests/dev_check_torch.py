"""Development check of the lowbit package against torch and bitsandbytes.

Not part of the test suite (torch and bitsandbytes are never dependencies
of lowbit). Run with a Python that has torch (CPU), bitsandbytes and numpy:

    LOWBIT_C_LIBRARY=build/capi/liblowbit_c.so PYTHONPATH=python \\
        /tmp/venv/bin/python python/tests/dev_check_torch.py

Checks (CPU tensors):
  a) NF4 quantize of a torch float32 tensor: the same packed codes and
     absmax bytes as bitsandbytes.functional.quantize_4bit(blocksize=64,
     quant_type="nf4"); nested NF4 (compress_statistics): the same codes,
     lowbit's offset the correctly rounded mean and bnb's (torch's float32
     mean) within 4 ulps of it, nested absmax = max|absmax - offset| (scale
     code differences reported); 8-bit dynamic (quantize_blockwise): the same absmax
     and code bytes (where codes differ the detail says which choice is the
     nearer map entry); the dynamic quant_map compared entry by entry
     (informational);
  b) lowbit AdamW (fp32 states and weights) against
     torch.optim.AdamW(foreach=False) over 10 steps, within float32
     tolerance (rtol 1e-5, atol 1e-6); LowbitOptimizer(states="fp32") too;
  c) LowbitOptimizer / AdamW8bit train a tiny torch MLP (loss falls by a
     factor >= 3 in 300 steps) and a learning-rate scheduler's lr reaches
     the C side;
  d) torch buffers: quantize returns torch tensors, bfloat16 dequantize and
     dequant_linear with bfloat16 activations agree with torch math;
  e) QuantizedLinear / QuantizedWeightOptimizer (QFT from PyTorch): y, dx,
     dW, db against float64 (also with products="torch"), fused and
     unfused updates equal, a model without float parameters still steps;
  g) quantize_linears_ on a LLaMA-shaped torch model: the 14 projections
     in int8 (head kept), logits within 5% of the float model's, 300 steps
     of QFT (QuantizedWeightOptimizer fused + Lion8bit for the float
     parameters) on tinyshakespeare bytes: held-out loss against torch
     AdamW fp32 on the same batches (reported), states through torch.save
     resume bit for bit, model.state_dict() (quantized buffers included)
     reloads into a fresh quantized model with identical outputs and is
     refused, untouched, by layers of another block size;
     g2) dequantize_linears_ on a QFT-trained transformers LlamaForCausalLM:
     float Linears holding the decoded weights exactly, logits within
     1e-5 of the quantized model's, save_pretrained / from_pretrained
     reload them bit for bit, shared layers stay shared;
  h) QuantizedLinear.from_bnb on bitsandbytes Linear4bit (nf4 / fp4,
     nested or not): lowbit's decode of bnb's bytes within 2^-20 of
     bnb's dequantize_4bit, the forward within 1e-5 of float64, and the
     layer trains with QuantizedWeightOptimizer;
  f) state_dict: through torch.save / torch.load(weights_only=True) into a
     fresh AdamW8bit, 20 more steps bit for bit; bitsandbytes AdamW8bit /
     Lion8bit state_dicts load into lowbit's and lowbit's into
     bitsandbytes' (both directions): the loaded states equal the source's,
     and one more step of each from that state agrees within 0.05 lr per
     element; bfloat16 states and float32 masters resume bit for bit.
Prints a PASS/FAIL table; exits non-zero on any failure.
"""

import os
import sys
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lowbit  # noqa: E402
import lowbit.torch_nn  # noqa: E402,F401

RESULTS = []


def check(name):
    def wrap(fn):
        try:
            detail = fn()
            RESULTS.append((name, True, detail or ""))
        except Exception as e:  # report and go on
            traceback.print_exc()
            RESULTS.append((name, False, "%s: %s" % (type(e).__name__, e)))
        return fn
    return wrap


def raw(t):
    return t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def bnb():
    import bitsandbytes.functional as F
    return F


torch.manual_seed(0)


def _code_diff(x, codes_bnb, codes_lowbit, qmap, absmax, bs):
    """Where two 8-bit dynamic encodings differ: how many, and which of the
    two picked the map entry nearer to x * (1/absmax) (bnb's map)."""
    x = np.asarray(x, np.float32).ravel()
    cb = np.asarray(codes_bnb).astype(np.int64).ravel()
    cl = np.asarray(codes_lowbit).astype(np.int64).ravel()
    idx = np.nonzero(cb != cl)[0]
    if idx.size == 0:
        return "all %d equal" % x.size, 0
    scale = np.asarray(absmax, np.float32)[idx // bs]
    xs = (x[idx] * (np.float32(1) / scale)).astype(np.float64)
    m = np.asarray(qmap, np.float64)
    db, dl = np.abs(xs - m[cb[idx]]), np.abs(xs - m[cl[idx]])
    gap = np.abs(m[cb[idx]] - m[cl[idx]])
    return ("%d of %d codes differ (all adjacent: %s); nearer entry: lowbit %d, bnb %d, tie %d; "
            "bnb's pick is up to %.2f gap farther"
            % (idx.size, x.size, bool(np.all(np.abs(cb[idx] - cl[idx]) == 1)), int((dl < db).sum()),
               int((db < dl).sum()), int((db == dl).sum()), float(np.max((db - dl) / gap)))), int((db < dl).sum())


@check("a1 nf4 codes/absmax == bnb quantize_4bit")
def _():
    F = bnb()
    t = torch.randn(64 * 1000 + 32) * torch.rand(64 * 1000 + 32).pow(3)
    packed, qs = F.quantize_4bit(t, blocksize=64, quant_type="nf4")
    q = lowbit.quantize(t, "nf4", block_size=64)
    assert isinstance(q.codes, torch.Tensor), type(q.codes)
    assert raw(packed) == raw(q.codes), "codes differ at %d bytes" % int(
        (packed.view(-1) != q.codes).sum())
    assert raw(qs.absmax) == raw(q.absmax), "absmax differs"
    deq = F.dequantize_4bit(packed, qs)
    mine = lowbit.dequantize(q)
    assert torch.equal(deq.view(-1), mine.view(-1)), "dequantize differs"
    return "%d elements, %d bytes equal" % (t.numel(), len(raw(packed)))


@check("a2 nf4 nested (compress_statistics) ~ bnb")
def _():
    # lowbit's offset is the correctly rounded mean (double sum, FORMATS.md),
    # bnb's torch's float32 mean: they may differ by an ulp, and with them
    # the nested absmax; codes are computed from the exact absmax.
    F = bnb()
    t = torch.randn(64 * 600) * torch.rand(64 * 600)
    packed, qs = F.quantize_4bit(t, blocksize=64, quant_type="nf4", compress_statistics=True)
    q = lowbit.quantize(t, "nf4", block_size=64, nested=True)
    assert raw(packed) == raw(q.codes), "4-bit codes differ"
    off_b, off_l = np.float32(float(qs.offset)), q.nested_offset.numpy()[0]
    ulp = lambda a, b: int(abs(np.int64(np.float32(a).view(np.int32)) - np.int64(np.float32(b).view(np.int32))))  # noqa: E731
    exact = lowbit.quantize(t, "nf4", block_size=64).absmax.numpy().astype(np.float32)
    mean = float(np.mean(exact.astype(np.float64)))
    assert abs(float(off_l) - mean) <= 0.5 * float(np.spacing(np.float32(mean))), "lowbit offset not the rounded mean"
    off_ulps = ulp(off_b, off_l)
    assert off_ulps <= 4, "offsets %d ulp apart" % off_ulps
    groups = [exact[i:i + 256] for i in range(0, exact.size, 256)]
    want = np.array([np.max(np.abs(g - off_l)) for g in groups], np.float32)
    assert raw(torch.from_numpy(want)) == raw(q.nested_absmax), "lowbit nested absmax != max|absmax - offset|"
    nab = max(ulp(a, b) for a, b in zip(qs.state2.absmax.numpy(), q.nested_absmax.numpy()))
    n_codes = int((qs.absmax.view(-1) != q.absmax_codes.view(-1)).sum())
    return ("4-bit codes equal; offsets %d ulp apart (bnb: torch float32 mean), nested absmax <= %d ulp; "
            "%d of %d scale codes differ" % (off_ulps, nab, n_codes, exact.size))


# bitsandbytes 0.50's CPU quantize_blockwise does not always pick the
# nearest entry of its map (mostly for tiny values; sometimes not even a
# neighbour of it), so codes can differ; the check is that wherever they
# differ lowbit's entry is the nearer one (and the scales are equal).
@check("a3 dynamic8 vs bnb quantize_blockwise: lowbit nearest where codes differ")
def _():
    F = bnb()
    out, bnb_nearer = [], 0
    for bs in (256, 4096):
        t = torch.randn(4096 * 5 + 100) * torch.rand(4096 * 5 + 100)
        codes, qs = F.quantize_blockwise(t, blocksize=bs)
        q = lowbit.quantize(t, "dynamic8", block_size=bs)
        assert raw(qs.absmax) == raw(q.absmax), "absmax differs (block %d)" % bs
        text, farther = _code_diff(t.numpy(), codes.view(-1).numpy(), q.codes.numpy(), qs.code.numpy(),
                                   qs.absmax.numpy(), bs)
        out.append("block %d: %s" % (bs, text))
        bnb_nearer += farther
    assert bnb_nearer == 0, "absmax equal; " + "; ".join(out)
    return "absmax equal; " + "; ".join(out)


@check("a4 (info) dynamic maps vs bnb create_dynamic_map")
def _():
    F = bnb()
    out = []
    for signed, fmt in ((True, "dynamic8"), (False, "udynamic8")):
        ref = F.create_dynamic_map(signed=signed).numpy()
        q = lowbit.QuantizedTensor(fmt, (256,), 256, False, np.arange(256, dtype=np.uint8),
                                   absmax=np.ones(1, np.float32))
        mine = lowbit.dequantize(q)
        diff = np.nonzero(mine != ref)[0]
        ulps = np.abs(mine.view(np.int32).astype(np.int64) - ref.view(np.int32))
        out.append("%s: %d entries differ (max %d ulp)" % (fmt, diff.size, ulps.max()))
    return "; ".join(out)


def _train_pair(make_lowbit, steps=10, lr=1e-2, wd=1e-2):
    gen = torch.Generator().manual_seed(1)
    shapes = [(300,), (17, 23)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    pt = [torch.nn.Parameter(x.clone()) for x in init]
    pl = [torch.nn.Parameter(x.clone()) for x in init]
    ref = torch.optim.AdamW(pt, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, foreach=False)
    step = make_lowbit(pl, lr, wd)
    for g in grads:
        for p, x in zip(pt, g):
            p.grad = x.clone()
        ref.step()
        step([x.clone() for x in g], pl)
    worst = 0.0
    for a, b in zip(pt, pl):
        err = (a.detach() - b.detach()).abs()
        tol = 1e-6 + 1e-5 * a.detach().abs()
        worst = max(worst, float((err / tol).max()))
        assert torch.all(err <= tol), "max err %g" % float(err.max())
    return "max err / tol = %.3f" % worst


@check("b1 Optimizer adamw/fp32/fp32 ~ torch AdamW (10 steps)")
def _():
    def make(params, lr, wd):
        opt = lowbit.Optimizer("adamw", "fp32", "fp32", lr=lr, weight_decay=wd)
        for p in params:
            opt.add_param(p)  # requires_grad: detached inside, same storage

        def step(grads, _params):
            opt.step(grads)
        return step
    return _train_pair(make)


@check("b2 LowbitOptimizer(states=fp32) ~ torch AdamW (10 steps)")
def _():
    def make(params, lr, wd):
        opt = lowbit.LowbitOptimizer(params, rule="adamw", states="fp32", lr=lr, weight_decay=wd)

        def step(grads, ps):
            for p, g in zip(ps, grads):
                p.grad = g
            opt.step()
        return step
    return _train_pair(make)


def _mlp_run(make_opt, steps=300, dtype=torch.float32):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(256, 16, generator=gen)
    y = torch.sin(x @ torch.randn(16, 1, generator=gen))
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1)).to(dtype)
    opt, sched = make_opt(model.parameters())
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
    return losses, opt


@check("c1 AdamW8bit trains an MLP; scheduler lr reaches C")
def _():
    def make(params):
        opt = lowbit.AdamW8bit(params, lr=3e-3)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    losses, opt = _mlp_run(make)
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])
    c_lr = opt.lowbit.hparams(0)["lr"]
    assert abs(c_lr - 3e-3 * 0.25) < 1e-9, c_lr  # lr after 2 decays, pushed before step 300
    m = opt.memory()
    return "loss %.4g -> %.4g, C lr %g, %.2f bytes/param" % (losses[0], losses[-1], c_lr, m.bytes_per_param)


@check("c2 Lion8bit / bf16 parameters train an MLP")
def _():
    losses, opt = _mlp_run(lambda p: (lowbit.Lion8bit(p, lr=1e-3), None), dtype=torch.bfloat16)
    assert opt.lowbit.composition == "lion/int8/bf16/host", opt.lowbit.composition
    assert losses[-1] < losses[0] / 3, (losses[0], losses[-1])
    return "loss %.4g -> %.4g (%s)" % (losses[0], losses[-1], opt.lowbit.composition)


@check("c3 LowbitOptimizer param groups and AdamW4bit / Lion")
def _():
    model = torch.nn.Linear(64, 128)
    opt = lowbit.AdamW4bit([{"params": [model.weight]}, {"params": [model.bias], "lr": 1e-2}], lr=1e-3)
    assert opt.lowbit.hparams(1)["lr"] == 1e-2 and opt.lowbit.hparams(0)["lr"] == 1e-3
    model(torch.randn(4, 64)).sum().backward()
    w0 = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(w0, model.weight.detach())
    assert opt.last_report.step == 1
    sd = opt.state_dict()  # 4-bit codes packed two per byte, the groups' lr kept
    assert sd["state"][0]["__bnb_optimizer_quant_state__"]["state1"].shape == (64 * 128 // 2,)
    assert [g["lr"] for g in sd["param_groups"]] == [1e-3, 1e-2]
    opt2 = lowbit.Lion(model.parameters())
    assert opt2.lowbit.composition == "lion/fp32/fp32/host"
    return "groups ok, %s, %s" % (opt.lowbit.composition, opt2.lowbit.composition)


@check("d1 torch buffers, bf16 dequantize and dequant_linear")
def _():
    w = torch.randn(37, 100, requires_grad=True)
    q = lowbit.quantize(w, "nf4", block_size=64, nested=True)
    assert all(isinstance(b, torch.Tensor) for b in q.buffers().values())
    d32 = lowbit.dequantize(q)
    d16 = lowbit.dequantize(q, dtype=torch.bfloat16)
    assert d16.dtype == torch.bfloat16 and d16.shape == (37, 100)
    assert torch.equal(d16, d32.to(torch.bfloat16)), "bf16 dequantize != float32 rounded"
    x = torch.randn(5, 100).to(torch.bfloat16)
    y = lowbit.dequant_linear(x, q)
    assert y.dtype == torch.bfloat16 and y.shape == (5, 37)
    ref = x.double() @ d32.double().T
    bound = 102 * 2.0 ** -24 * (x.double().abs() @ d32.double().abs().T) + 2.0 ** -8 * ref.abs() + 1e-30
    assert torch.all((y.double() - ref).abs() <= bound), "bf16 linear out of bound"
    dx = lowbit.dequant_linear_backward_input(y, q)
    assert dx.shape == (5, 100)
    return "ok"


def _float32_sum_bounds(cases):
    """cases: (got, float64 reference, float64 sum of magnitudes, terms L);
    asserts |got - ref| <= (L + 2) 2^-24 x magnitudes (terms given as L + 2)
    elementwise, the bound of a float32 sum of L products in any order;
    returns each case's largest error / bound."""
    worst = []
    for got, ref, m, terms in cases:
        err = (got.detach().double() - ref).abs()
        bound = terms * 2.0 ** -24 * m + 1e-30
        assert torch.all(err <= bound), "out of bound: %g > %g" % (float(err.max()), float(bound.max()))
        worst.append(float((err / bound).max()))
    return worst


def _layer_forward_backward(layer, lead_shape):
    """One forward and backward of a QuantizedLinear on random input of
    lead_shape + (in,) and a random output gradient; returns the decoded
    weight, x, y, dy and x, dy in float64."""
    w = layer.dequantized_weight().double()
    x = torch.randn(*lead_shape, layer.in_features, requires_grad=True)
    y = layer(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    return w, x, y, dy, x.detach().double(), dy.double()


@check("e1 QuantizedLinear: y, dx, dW, db against float64 with the dequantized W")
def _():
    from lowbit.torch_nn import QuantizedLinear
    torch.manual_seed(3)
    lin = torch.nn.Linear(96, 40)
    layer = QuantizedLinear.from_linear(lin, format="int8", block_size=256)
    w, x, y, dy, xd, dyd = _layer_forward_backward(layer, (2, 7))
    y_ref = xd @ w.T + layer.bias.detach().double()
    mag = xd.abs() @ w.abs().T + layer.bias.detach().double().abs()
    # float32 sums of <= 96 (forward, dx: 40; dW: 14) products: (L + 2) 2^-24 of the magnitudes
    worst = _float32_sum_bounds(((y, y_ref, mag, 98), (x.grad, dyd @ w, dyd.abs() @ w.abs(), 42),
                                 (layer.weight_grad, dyd.reshape(-1, 40).T @ xd.reshape(-1, 96),
                                  dyd.reshape(-1, 40).abs().T @ xd.reshape(-1, 96).abs(), 16),
                                 (layer.bias.grad, dyd.reshape(-1, 40).sum(0), dyd.reshape(-1, 40).abs().sum(0), 16)))
    return "max err / bound: y %.2f, dx %.2f, dW %.2f, db %.2f" % tuple(worst)


@check("e1b QuantizedLinear products='torch': y, dx, dW, db against float64; bad value refused")
def _():
    from lowbit.torch_nn import QuantizedLinear, quantize_linears_
    torch.manual_seed(4)
    lin = torch.nn.Linear(300, 70)
    layer = QuantizedLinear.from_linear(lin, format="nf4", block_size=64, nested=True)
    layer.products = "torch"
    w, x, y, dy, xd, dyd = _layer_forward_backward(layer, (3, 5))
    # float32 sums of <= 300 products (dx: 70; dW: 15) in any order: (L + 2) 2^-24 of the magnitudes
    worst = _float32_sum_bounds(((y, xd @ w.T + layer.bias.detach().double(),
                                  xd.abs() @ w.abs().T + layer.bias.detach().double().abs(), 302),
                                 (x.grad, dyd @ w, dyd.abs() @ w.abs(), 72),
                                 (layer.weight_grad, dyd.reshape(-1, 70).T @ xd.reshape(-1, 300),
                                  dyd.reshape(-1, 70).abs().T @ xd.reshape(-1, 300).abs(), 17)))
    assert y.dtype == torch.float32 and x.grad.dtype == torch.float32
    xb = torch.randn(4, 300, dtype=torch.bfloat16)
    assert layer(xb).dtype == torch.bfloat16  # output in the input's dtype, as with lowbit's products
    for bad in ("cublas", None):
        try:
            layer.products = bad
            raise AssertionError("products=%r accepted" % (bad,))
        except ValueError:
            pass
    assert layer.products == "torch"
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    try:
        quantize_linears_(model, products="fast")
        raise AssertionError("quantize_linears_(products='fast') accepted")
    except ValueError:
        assert type(model[0]) is torch.nn.Linear  # nothing replaced
    quantize_linears_(model, products="torch")
    assert model[0].products == "torch"
    return "max err / bound: y %.2f, dx %.2f, dW %.2f" % tuple(worst)


@check("e2 QFT from PyTorch: fused and unfused QuantizedWeightOptimizer, same bits; loss falls")
def _():
    from lowbit.torch_nn import QuantizedLinear, QuantizedWeightOptimizer

    def model_and_data():
        torch.manual_seed(5)
        net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
        q = torch.nn.Sequential(QuantizedLinear.from_linear(net[0]), torch.nn.ReLU(),
                                QuantizedLinear.from_linear(net[2]))
        teacher = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        xs = torch.randn(512, 64)
        with torch.no_grad():
            ys = teacher(xs)
        return q, xs, ys

    finals, losses = [], []
    for fused in (True, False):
        q, xs, ys = model_and_data()
        start = [raw(layer.weight_q.codes) for layer in (q[0], q[2])]
        opt = QuantizedWeightOptimizer(q, lr=3e-3, seed=11, fused=fused)
        bias_opt = torch.optim.SGD([p for p in q.parameters()], lr=1e-2)
        first = None
        for step in range(150):
            i = (step * 64) % 512
            loss = torch.nn.functional.mse_loss(q(xs[i:i + 64]), ys[i:i + 64])
            bias_opt.zero_grad()
            loss.backward()
            opt.step()
            bias_opt.step()
            first = float(loss) if first is None else first
        with torch.no_grad():
            full = float(torch.nn.functional.mse_loss(q(xs), ys))
        losses.append((first, full))
        assert all(raw(layer.weight_q.codes) != b for layer, b in zip((q[0], q[2]), start)), "weights unchanged"
        finals.append([raw(b) for layer in opt.layers for b in layer.weight_q.buffers().values()])
    assert finals[0] == finals[1], "fused and unfused weights differ"
    assert losses[0][1] < 0.5 * losses[0][0], "loss did not halve: %s" % (losses,)
    return "weights equal bit for bit; loss %.4f -> %.4f (int8 weights, Lion 8-bit, 150 steps)" % losses[0]


@check("e3 QuantizedLinear without float parameters still records its backward")
def _():
    from lowbit.torch_nn import QuantizedLinear, QuantizedWeightOptimizer
    torch.manual_seed(7)
    q = torch.nn.Sequential(QuantizedLinear(32, 64, bias=False), torch.nn.ReLU(), QuantizedLinear(64, 8, bias=False))
    assert not any(p.requires_grad for p in q.parameters())
    before = [raw(m.weight_q.codes) for m in (q[0], q[2])]
    opt = QuantizedWeightOptimizer(q, lr=1e-2, seed=3)
    q(torch.randn(16, 32)).square().mean().backward()
    report = opt.step()
    assert report is not None and report.skipped == 0, report
    changed = [raw(m.weight_q.codes) != b for m, b in zip((q[0], q[2]), before)]
    assert all(changed), "weights unchanged: %s" % changed
    return "both layers stepped (step %d)" % report.step


def _mlp(seed=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1))


def _mlp_batches(n, seed=2):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 1, generator=gen)
    out = []
    for _ in range(n):
        x = torch.randn(64, 16, generator=gen)
        out.append((x, torch.sin(x @ w)))
    return out


def _train(model, opt, batches):
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _one_step_delta(model, opt, batch):
    """The parameter change of one step from the model's current state."""
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, [batch])
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


@check("f1 state_dict through torch.save / torch.load continues bit for bit")
def _():
    import copy
    import io
    batches = _mlp_batches(40)
    model = _mlp()
    opt = lowbit.AdamW8bit(model.parameters(), lr=3e-3)
    _train(model, opt, batches[:20])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    twin = copy.deepcopy(model)
    twin_opt = lowbit.AdamW8bit(twin.parameters(), lr=1.0)  # the lr comes from the dict
    twin_opt.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    _train(model, opt, batches[20:])
    _train(twin, twin_opt, batches[20:])
    same = all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert same, "the resumed run differs"
    assert twin_opt.param_groups[0]["lr"] == 3e-3
    return "%d bytes through torch.save (weights_only load), 20 more steps identical" % len(buf.getvalue())


def _handover(make_from, make_to, steps=30, pairs=None):
    """Train with make_from, load its state_dict into make_to over a copy
    of the model, and compare one step of each from that state; returns
    (max |delta_to - delta_from| / lr, the codes equal?, details)."""
    import copy
    batches = _mlp_batches(steps + 1)
    model = _mlp()
    src = make_from(model.parameters())
    _train(model, src, batches[:steps])
    twin = copy.deepcopy(model)
    dst = make_to(twin.parameters())
    dst.load_state_dict(src.state_dict())
    # the states as the destination holds them equal the source's
    s_src, s_dst = src.state_dict()["state"], dst.state_dict()["state"]
    key = "__bnb_optimizer_quant_state__"
    equal = all(torch.equal(s_src[i][key][k], s_dst[i][key][k])
                for i in s_src for k in s_src[i][key] if not k.startswith("qmap"))
    d_src = _one_step_delta(model, src, batches[steps])
    d_dst = _one_step_delta(twin, dst, batches[steps])
    lr = src.param_groups[0]["lr"]
    worst = max(float((a - b).abs().max()) for a, b in zip(d_src, d_dst)) / lr
    size = max(float(a.abs().max()) for a in d_src) / lr
    return worst, equal, size


@check("f4 state_dict with bfloat16 states and float32 masters (bf16 parameters) resumes bit for bit")
def _():
    import copy
    batches = _mlp_batches(30)
    out = []
    for states, weights in (("bf16", "bf16"), ("int8", "fp32_master_bf16")):
        model = _mlp().to(torch.bfloat16)
        make = lambda params: lowbit.LowbitOptimizer(params, rule="adamw", states=states, weights=weights,  # noqa: E731
                                                     lr=3e-3, seed=2)
        opt = make(model.parameters())
        bf = [(x.to(torch.bfloat16), y.to(torch.bfloat16)) for x, y in batches]
        _train(model, opt, bf[:15])
        sd = opt.state_dict()
        kinds = sorted({str(t.dtype) for s in sd["state"].values() for t in s["__bnb_optimizer_quant_state__"].values()})
        twin = copy.deepcopy(model)
        twin_opt = make(twin.parameters())
        twin_opt.load_state_dict(sd)
        _train(model, opt, bf[15:])
        _train(twin, twin_opt, bf[15:])
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters())), states + weights
        out.append("%s/%s: %s" % (states, weights, ", ".join(kinds)))
    return "; ".join(out)


def _both_ways(bnb_class, lowbit_class, lr):
    """_handover from bitsandbytes to lowbit and back, each asserted."""
    out = []
    for name, make_from, make_to in (
            ("bnb->lowbit", lambda p: bnb_class(p, lr=lr), lambda p: lowbit_class(p, lr=lr)),
            ("lowbit->bnb", lambda p: lowbit_class(p, lr=lr), lambda p: bnb_class(p, lr=lr))):
        worst, equal, size = _handover(make_from, make_to)
        assert equal, name + ": states differ after loading"
        assert worst <= 0.05, "%s: next steps differ by %.3g lr" % (name, worst)
        out.append("%s: states equal, next step within %.2g lr (step up to %.2f lr)" % (name, worst, size))
    return "; ".join(out)


@check("f2 bitsandbytes AdamW8bit -> lowbit AdamW8bit (state_dict) and back")
def _():
    import bitsandbytes as bnb_pkg
    return _both_ways(bnb_pkg.optim.AdamW8bit, lowbit.AdamW8bit, 3e-3)


@check("f3 bitsandbytes Lion8bit <-> lowbit Lion8bit (state_dict)")
def _():
    import bitsandbytes as bnb_pkg
    return _both_ways(bnb_pkg.optim.Lion8bit, lowbit.Lion8bit, 1e-3)


def _example():
    """examples/python/qft_tiny_llama.py as a module (its model, data and QFT setup)."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("qft_tiny_llama",
                                                  os.path.join(root, "examples", "python", "qft_tiny_llama.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@check("g1 quantize_linears_: a LLaMA-shaped torch model trained by QFT (int8 weights, Lion 8-bit)")
def _():
    import copy
    import io
    from lowbit.torch_nn import quantize_linears_
    ex = _example()
    torch.manual_seed(11)
    base = ex.TinyLlama()
    batches, held_out = ex.byte_batches(300), ex.byte_batches(8, seed=99)
    # float baseline: torch AdamW on every parameter
    ref = copy.deepcopy(base)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.0)
    for batch in batches:
        ref_opt.zero_grad()
        ex.lm_loss(ref, batch).backward()
        ref_opt.step()
    # QFT: every Linear but the head in int8, stepped inside the backward
    model = copy.deepcopy(base)
    names, qopt, fopt = ex.make_qft(model)
    assert len(names) == 14 and "lm_head" not in names and "blocks.0.q" in names, names
    # a tied head is refused by name; a layer used in two places stays one layer
    tied = ex.TinyLlama()
    tied.lm_head.weight = tied.embed.weight
    try:
        quantize_linears_(tied)
        raise AssertionError("a tied head was quantized")
    except ValueError as e:
        assert "'lm_head'" in str(e) and "embed.weight" in str(e), e
    shared = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    shared.append(shared[0])
    assert quantize_linears_(shared) == ["0", "2"] and shared[0] is shared[2]
    with torch.no_grad():
        probe = held_out[0][0]
        drift = float((model(probe) - base(probe)).abs().max() / base(probe).abs().max())
    assert drift < 0.05, "int8 weights moved the logits by %.3g of their size" % drift
    first = None
    for step, batch in enumerate(batches):
        loss = ex.qft_step(model, qopt, fopt, batch)
        first = loss if first is None else first
        if step == 149:  # the optimizers' states through torch.save, resumed in a twin
            buf = io.BytesIO()
            torch.save({"q": qopt.state_dict(), "f": fopt.state_dict()}, buf)
            twin = copy.deepcopy(model)
            _, twin_q, twin_f = ex.make_qft(twin, lr=0.5, betas=(0.5, 0.5))  # the dicts bring the hyperparameters
            saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
            twin_q.load_state_dict(saved["q"])
            twin_f.load_state_dict(saved["f"])
    for batch in batches[150:]:
        ex.qft_step(twin, twin_q, twin_f, batch)
    same = all(torch.equal(a.weight_q.codes, b.weight_q.codes) for a, b in
               zip(qopt.layers, twin_q.layers)) and all(
        torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert same, "the run resumed from state_dicts differs"
    # the trained model (quantized weights included) through torch.save into a fresh quantized model
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = ex.TinyLlama()
    quantize_linears_(fresh, "int8", skip=["lm_head"])
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    probe = held_out[1][0]
    with torch.no_grad():
        assert torch.equal(fresh(probe), model(probe)), "the model reloaded from its state_dict differs"
    # another block size (codes of the same shape): refused, the layers keep their bytes
    other = ex.TinyLlama()
    quantize_linears_(other, "int8", block_size=128, skip=["lm_head"])
    kept = [b.clone() for b in other.buffers()]
    try:
        other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
        raise AssertionError("an int8 / 256 state_dict loaded into int8 / 128 layers")
    except RuntimeError as e:
        assert "'block_size': 256" in str(e) and "nothing of it loaded" in str(e), e
    assert all(torch.equal(a, b) for a, b in zip(kept, other.buffers())), "a refused load changed the layers"
    val_q, val_ref = ex.held_out_loss(model, held_out), ex.held_out_loss(ref, held_out)
    assert val_q < first * 0.6, (first, val_q)
    mem = qopt.optimizer.memory()
    return ("%d layers quantized; logits drift %.2g; loss %.3f -> held-out %.3f (torch AdamW fp32: %.3f, %+.1f%%); "
            "resumed from state_dicts bit for bit; model.state_dict() reloads identically; quantized layers "
            "%.2f B/param"
            % (len(names), drift, first, val_q, val_ref, 100 * (val_q / val_ref - 1), mem.bytes_per_param))


@check("g2 dequantize_linears_: a QFT-trained transformers LLaMA saved with save_pretrained and reloaded")
def _():
    import copy
    import tempfile
    from lowbit.torch_nn import dequantize_linears_, quantize_linears_
    try:
        import transformers
    except ImportError:
        return "transformers not installed: not checked"
    torch.manual_seed(5)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).float()
    names = quantize_linears_(model, "int8", skip=["lm_head"])
    qopt = lowbit.torch_nn.QuantizedWeightOptimizer(model, lr=1e-3)
    fopt = lowbit.Lion8bit([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(20):
        out = model(input_ids=ids[:, :-1], labels=ids[:, :-1])
        out.loss.backward()
        qopt.step()
        fopt.step()
        fopt.zero_grad()
        losses.append(float(out.loss))
    assert losses[-1] < losses[0], losses
    quantized = copy.deepcopy(model)
    decoded = {n: m.dequantized_weight() for n, m in model.named_modules()
               if isinstance(m, lowbit.torch_nn.QuantizedLinear)}
    assert dequantize_linears_(model) == names
    assert not lowbit.torch_nn.quantized_linears(model)
    for n, m in model.named_modules():
        if n in decoded:
            assert type(m) is torch.nn.Linear and torch.equal(m.weight, decoded[n]), n
    probe = ids[:2, :-1]
    with torch.no_grad():
        want = quantized(input_ids=probe).logits
        got = model(input_ids=probe).logits
    drift = float((got - want).abs().max() / want.abs().max())
    assert drift <= 1e-5, "float layers differ from the quantized ones by %.3g" % drift
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        back = transformers.LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
        with torch.no_grad():
            again = back(input_ids=probe).logits
    assert torch.equal(again, got), "save_pretrained / from_pretrained changed the logits"
    with torch.no_grad():  # to bfloat16: each weight the float32 decode rounded to nearest even by torch
        shared = torch.nn.Sequential(lowbit.torch_nn.QuantizedLinear(8, 8), torch.nn.ReLU())
        shared.append(shared[0])
        assert dequantize_linears_(shared, torch.bfloat16) == ["0", "2"] and shared[0] is shared[2]
        assert shared[0].weight.dtype == torch.bfloat16
    return ("%d layers: QFT loss %.3f -> %.3f in 20 steps; float layers' logits within %.1g of the quantized "
            "model's; save_pretrained + from_pretrained (transformers %s) give them bit for bit"
            % (len(names), losses[0], losses[-1], drift, transformers.__version__))


@check("h1 QuantizedLinear.from_bnb: bitsandbytes Linear4bit's codes and scales taken as they are")
def _():
    import bitsandbytes as bnb_pkg
    F = bnb()
    out = []
    for fmt, nested in (("nf4", False), ("nf4", True), ("fp4", False), ("fp4", True)):
        torch.manual_seed(4)
        lin = torch.nn.Linear(192, 48)
        b4 = bnb_pkg.nn.Linear4bit(192, 48, compress_statistics=nested, quant_type=fmt,
                                   compute_dtype=torch.float32)
        b4.load_state_dict(lin.state_dict())
        b4 = b4.to("cpu")
        layer = lowbit.torch_nn.QuantizedLinear.from_bnb(b4)
        # the same weight: lowbit's decode of bnb's bytes against bnb's own dequantize_4bit
        ref = F.dequantize_4bit(b4.weight.data, b4.weight.quant_state).float()
        got = layer.dequantized_weight()
        err = float((got - ref).abs().max() / ref.abs().max())
        assert err <= 2.0 ** -20, "%s nested=%s: weights differ by %.3g" % (fmt, nested, err)
        x = torch.randn(8, 192)
        y_ref = x.double() @ ref.double().t() + lin.bias.double()
        y = layer(x).double()
        yerr = float((y - y_ref).abs().max() / y_ref.abs().max())
        assert yerr <= 1e-5, "%s nested=%s: forward differs by %.3g" % (fmt, nested, yerr)
        assert torch.equal(b4.weight.data.reshape(-1), layer.weight_q.codes)  # bnb's module untouched, bytes copied
        out.append("%s%s %.1g/%.1g" % (fmt, "+nested" if nested else "", err, yerr))
    # and such a layer trains (QFT-NF4: Lion 8-bit, stochastic rounding)
    layer_q = lowbit.torch_nn.QuantizedLinear.from_bnb(b4)
    opt = lowbit.torch_nn.QuantizedWeightOptimizer(layer_q, lr=1e-3)
    target = torch.randn(48, 192) * 0.05
    xs = torch.randn(64, 192)
    losses = []
    for _ in range(100):
        loss = (layer_q(xs) - xs @ target.t()).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.5, (losses[0], losses[-1])
    return ("weight / forward rel. error vs bnb dequantize_4bit: %s; fp4+nested layer trained %.3g -> %.3g"
            % (", ".join(out), losses[0], losses[-1]))


def main():
    width = max(len(n) for n, _, _ in RESULTS)
    print()
    print("%-*s  %-4s  %s" % (width, "check", "", "detail"))
    for name, ok, detail in RESULTS:
        print("%-*s  %-4s  %s" % (width, name, "PASS" if ok else "FAIL", detail))
    failed = sum(1 for _, ok, _ in RESULTS if not ok)
    print("\n%d checks, %d failed" % (len(RESULTS), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
