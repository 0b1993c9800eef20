"""The torch adapters (lowbit.torch_optim, lowbit.torch_nn) against torch's
own contracts. Skipped, and reported as skipped, where torch is not
installed (it is never a dependency of lowbit); run them with a Python that
has torch (CPU is enough), e.g.

    LOWBIT_C_LIBRARY=build/capi/liblowbit_c.so PYTHONPATH=python \\
        /tmp/venv/bin/python -m unittest discover -s python/tests -v

Properties checked:
- casting a model (.to(bfloat16), .half(), .double()) leaves a
  QuantizedLinear's codes and scales as they were (same tensors, same
  bytes), casts its bias, and the forward then equals a float64 product
  of the decoded weight within bfloat16 / float16 rounding of the output;
- a parameter (or quantized buffer) whose storage was replaced after the
  optimizer was built (.to(dtype), share_memory(), load_state_dict(assign=
  True)) makes step() raise InvalidArgument naming it, and nothing is
  updated: the C states and the weights keep their bytes;
- a fused QuantizedWeightOptimizer refuses a second gradient for a layer
  within one step (a shared layer; two backwards before step()) and
  leaves fused=False (where a shared layer's gradient is the sum over its
  uses, float64 reference within 1e-5 relative) to do it; fused equals
  unfused bit for bit under torch.utils.checkpoint (both kinds);
- a refused add_param_group (bad lr / betas / eps, a duplicate
  parameter, or a C-side refusal) leaves param_groups, the dtype / device
  bookkeeping and later steps as they were; a group added afterwards
  steps exactly like the same group in a fresh optimizer;
- load_state_dict refuses states of another shape (another parameter's
  states, or flat per-element states) and takes bitsandbytes' shapes;
- QuantizedWeightOptimizer(max_grad_norm) with fused=False: grad_norm is
  the float64 norm of the finite weight gradients (rel. 1e-12), grad_scale
  max / (norm + 1e-6) in float32, and the weights equal an unclipped run
  given that factor as grad_scale, bit for bit; fused=True refuses it;
- self.state is non-empty once stepped (and after load_state_dict), so
  torch.distributed.checkpoint's get_optimizer_state_dict takes no step;
- fp32_master_bf16: a parameter changed in place after the optimizer was
  built (load_state_dict, p.copy_; p.data via reload_master_weights())
  steps exactly like an optimizer built after the change; a resume
  (model and optimizer state loaded in either order) continues bit for
  bit (masters kept where they round to the parameter);
- a float32 bias with bfloat16 activations gets the float32 sum of dy
  (exactly torch's float32 sum);
- deepcopy / copy / pickle of lowbit optimizers raise TypeError.
"""

import copy
import io
import pickle
import unittest
import warnings

from lowbit_testing import lowbit, np

try:
    import torch
except ImportError:  # an honest skip: the suite runs without torch
    torch = None

if torch is not None:
    import lowbit.torch_nn as tn

requires_torch = unittest.skipUnless(torch is not None, "torch is not installed")
QUANT = "__bnb_optimizer_quant_state__"


def _linear_model(seed=0, sizes=((64, 64),), bias=True):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(i, o, bias=bias) for i, o in sizes]
    return torch.nn.Sequential(*layers)


def _qmodel(seed=0, sizes=((64, 64),), fmt="int8", nested=False):
    m = _linear_model(seed, sizes)
    tn.quantize_linears_(m, fmt, block_size=64 if fmt != "int8" else 256, nested=nested)
    return m


@requires_torch
class ModuleCastTest(unittest.TestCase):
    def check_cast(self, fmt, nested, cast, dtype):
        m = _qmodel(1, ((128, 32),), fmt, nested)
        layer = m[0]
        before = {n: (b, b.dtype, bytes(b.numpy().tobytes())) for n, b in layer.named_buffers()}
        w = layer.dequantized_weight(torch.float32).double()
        bias32 = layer.bias.detach().clone()
        cast(m)
        for n, b in layer.named_buffers():
            self.assertIs(b, before[n][0], n)  # same tensor: an optimizer built before still holds it
            self.assertEqual(b.dtype, before[n][1], n)
            self.assertEqual(bytes(b.numpy().tobytes()), before[n][2], n)
        self.assertEqual(layer.bias.dtype, dtype)
        torch.manual_seed(2)
        x = torch.randn(5, 128).to(dtype)
        y = m(x)
        self.assertEqual(y.dtype, dtype)
        ref = x.double() @ w.t() + bias32.to(dtype).double()
        # output rounded once to dtype (plus float32 accumulation)
        unit = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}[dtype]
        bound = 2 * unit * ref.abs().max().item() + 1e-5 * (x.double().abs() @ w.abs().t()).max().item()
        self.assertLessEqual((y.double() - ref).abs().max().item(), bound)

    def test_cast_keeps_codes_and_scales(self):
        for fmt, nested in (("int8", False), ("nf4", False), ("nf4", True)):
            with self.subTest(fmt=fmt, nested=nested):
                self.check_cast(fmt, nested, lambda m: m.to(torch.bfloat16), torch.bfloat16)
                self.check_cast(fmt, nested, lambda m: m.half(), torch.float16)
                # float64 activations are not served by lowbit's GEMM: there and back
                self.check_cast(fmt, nested, lambda m: m.double().float(), torch.float32)

    def test_optimizer_built_before_cast_keeps_stepping(self):
        m = _qmodel(3)
        opt = tn.QuantizedWeightOptimizer(m, lr=1e-2, seed=1)
        m.to(torch.bfloat16)
        codes = m[0].weight_codes.clone()
        m(torch.randn(4, 64, dtype=torch.bfloat16)).float().pow(2).sum().backward()
        report = opt.step()
        self.assertEqual(report.step, 1)
        self.assertFalse(torch.equal(codes, m[0].weight_codes))


@requires_torch
class ReplacedStorageTest(unittest.TestCase):
    def test_lowbit_optimizer_refuses_replaced_parameters(self):
        for change, pattern in ((lambda m: m.to(torch.bfloat16), r"torch.float32 -> torch.bfloat16"),
                                (lambda m: m.share_memory(), r"data pointer")):
            with self.subTest(pattern=pattern):
                m = _linear_model(4)[0]
                opt = lowbit.AdamW8bit(m.parameters(), lr=1e-1)
                m(torch.randn(4, 64)).sum().backward()
                opt.step()
                image = bytes(opt.lowbit.state_image())
                change(m)
                w0 = m.weight.detach().clone()
                m.zero_grad()
                m(torch.randn(4, 64, dtype=m.weight.dtype)).float().sum().backward()
                with self.assertRaisesRegex(lowbit.InvalidArgument,
                                            r"parameter 0 \(group 0, shape \(64, 64\)\): its storage was replaced "
                                            r"after the optimizer was built \(.*" + pattern + r".*build the "
                                            r"optimizer after moving / sharing the model"):
                    opt.step()
                self.assertTrue(torch.equal(w0, m.weight.detach()))
                self.assertEqual(bytes(opt.lowbit.state_image()), image)

    def test_quantized_weight_optimizer_refuses_replaced_buffers(self):
        for fused in (True, False):
            for how in ("assign", "share"):
                with self.subTest(fused=fused, how=how):
                    q = _qmodel(5, ((64, 64), (64, 64)))
                    opt = tn.QuantizedWeightOptimizer(q, lr=1e-2, fused=fused)
                    image = bytes(opt.optimizer.state_image())
                    if how == "assign":
                        sd = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in q.state_dict().items()}
                        q.load_state_dict(sd, assign=True)
                    else:
                        q.share_memory()
                    codes = [layer.weight_codes.clone() for layer in tn.quantized_linears(q)]
                    with self.assertRaisesRegex(lowbit.InvalidArgument,
                                                r"layer '0': its storage was replaced after the optimizer was built "
                                                r"\(weight_codes .*build the optimizer after moving / sharing"):
                        q(torch.randn(4, 64)).sum().backward()
                        opt.step()
                    for layer, c in zip(tn.quantized_linears(q), codes):
                        self.assertTrue(torch.equal(c, layer.weight_codes))
                    self.assertEqual(bytes(opt.optimizer.state_image()), image)


class _Twice(torch.nn.Module if torch is not None else object):
    """One Linear used twice per forward."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 64)

    def forward(self, x):
        return self.lin(torch.relu(self.lin(x)))


@requires_torch
class FusedSharedLayerTest(unittest.TestCase):
    def test_fused_refuses_a_second_gradient(self):
        torch.manual_seed(0)
        m = _Twice()
        tn.quantize_linears_(m, "int8")
        opt = tn.QuantizedWeightOptimizer(m, lr=1e-2, seed=1)
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"layer 'lin' got a second weight gradient within one "
                                                            r"optimizer step.*use fused=False"):
            m(torch.randn(8, 64)).pow(2).mean().backward()
        opt.step()  # closes the step the backward began
        # two backwards before step() (gradient accumulation): refused too
        q = _qmodel(1)
        opt = tn.QuantizedWeightOptimizer(q, lr=1e-2)
        q(torch.randn(4, 64)).sum().backward()
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"layer '0' got a second weight gradient"):
            q(torch.randn(4, 64)).sum().backward()
        opt.step()
        q(torch.randn(4, 64)).sum().backward()  # a new step: accepted
        self.assertEqual(opt.step().step, 2)

    def test_unfused_sums_a_shared_layers_gradients(self):
        torch.manual_seed(0)
        m = _Twice()
        tn.quantize_linears_(m, "int8")
        opt = tn.QuantizedWeightOptimizer(m, lr=1e-2, fused=False, seed=1)
        x = torch.randn(8, 64)
        m(x).pow(2).mean().backward()
        w = m.lin.dequantized_weight(torch.float32).double().requires_grad_(True)
        b = m.lin.bias.detach().double()
        f = torch.nn.functional.linear
        f(torch.relu(f(x.double(), w, b)), w, b).pow(2).mean().backward()
        err = (m.lin.weight_grad.double() - w.grad).abs().max().item()
        self.assertLessEqual(err, 1e-5 * w.grad.abs().max().item())
        self.assertEqual(opt.step().step, 1)
        self.assertEqual(opt.optimizer.param_info(0).steps, 1)

    def test_fused_equals_unfused_under_checkpoint(self):
        from torch.utils.checkpoint import checkpoint

        for reentrant in (False, True):
            results = []
            for fused in (True, False):
                q = _qmodel(6, ((64, 64), (64, 64)))
                opt = tn.QuantizedWeightOptimizer(q, lr=1e-2, fused=fused, seed=2)
                torch.manual_seed(7)
                for _ in range(3):
                    x = torch.randn(4, 64, requires_grad=reentrant)
                    y = checkpoint(lambda t: q[1](torch.relu(q[0](t))), x, use_reentrant=reentrant)
                    y.pow(2).mean().backward()
                    opt.step()
                results.append([layer.weight_codes.clone() for layer in tn.quantized_linears(q)])
            for a, b in zip(*results):
                self.assertTrue(torch.equal(a, b), "reentrant=%s" % reentrant)


@requires_torch
class AddParamGroupTest(unittest.TestCase):
    def make(self):
        torch.manual_seed(0)
        a = torch.nn.Parameter(torch.randn(64))
        return a, lowbit.AdamW8bit([a], lr=1e-3)

    def test_refused_groups_leave_the_optimizer_as_it_was(self):
        a, opt = self.make()
        b = torch.nn.Parameter(torch.randn(64))
        bad = [({"lr": -1.0}, r"param group 1: lr must be finite and >= 0"),
               ({"lr": float("nan")}, r"lr must be finite"),
               ({"betas": (0.9, 1.0)}, r"beta2 must be in \[0, 1\)"),
               ({"betas": (0.9, 0.999999999)}, r"beta2 must be in \[0, 1\) \(as a float32\)"),
               ({"eps": 0.0}, r"eps must be finite and > 0"),
               ({"weight_decay": float("inf")}, r"weight_decay must be finite"),
               ({"lr": "fast"}, r"param group 1: unusable hyperparameters"),
               ({"params": [b, b]}, r"appears twice"),
               ({"params": [torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))]}, r"one dtype")]
        for extra, pattern in bad:
            with self.subTest(extra=extra):
                group = {"params": [b]}
                group.update(extra)
                with self.assertRaisesRegex(lowbit.InvalidArgument, pattern), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch's own warning about the duplicate
                    opt.add_param_group(group)
                self.assertEqual(len(opt.param_groups), 1)
                self.assertEqual((opt._dtype, opt._device), (torch.float32, torch.device("cpu")))
                self.assertEqual(len(opt.lowbit), 1)
        a.grad = torch.ones(64)
        opt.step()
        self.assertEqual(opt.last_report.step, 1)
        self.assertEqual(len(opt.state_dict()["param_groups"]), 1)

    def test_group_after_a_c_side_refusal(self):
        # The C side refuses a parameter after it created the group: the
        # empty C group is left behind, and a later group maps past it.
        a, opt = self.make()
        b = torch.nn.Parameter(torch.randn(300))
        real = opt.lowbit.add_param

        def refuse(*args, **kwargs):
            raise lowbit.InvalidArgument("add_param refused (test)")

        opt.lowbit.add_param = refuse
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"refused \(test\)"):
            opt.add_param_group({"params": [b], "lr": 5e-2})
        opt.lowbit.add_param = real
        self.assertEqual(len(opt.param_groups), 1)
        opt.add_param_group({"params": [b], "lr": 5e-2, "weight_decay": 0.0})

        a2 = torch.nn.Parameter(a.detach().clone())
        b2 = torch.nn.Parameter(b.detach().clone())
        ref = lowbit.AdamW8bit([a2], lr=1e-3)
        ref.add_param_group({"params": [b2], "lr": 5e-2, "weight_decay": 0.0})
        torch.manual_seed(1)
        for _ in range(3):
            ga, gb = torch.randn(64), torch.randn(300)
            a.grad, b.grad, a2.grad, b2.grad = ga, gb, ga.clone(), gb.clone()
            opt.step()
            ref.step()
        self.assertTrue(torch.equal(a, a2))
        self.assertTrue(torch.equal(b, b2))
        sd = opt.state_dict()
        self.assertEqual([g["params"] for g in sd["param_groups"]], [[0], [1]])
        ref.load_state_dict(sd)

    def test_half_registered_group_makes_the_optimizer_unusable(self):
        a, opt = self.make()
        real = opt.lowbit.add_param
        calls = []

        def second_fails(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise lowbit.InvalidArgument("add_param refused (test)")
            return real(*args, **kwargs)

        opt.lowbit.add_param = second_fails
        with self.assertRaises(lowbit.InvalidArgument):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))]})
        self.assertEqual(len(opt.param_groups), 1)
        a.grad = torch.ones(64)
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"unusable since add_param_group failed after "
                                                            r"registering 1 of the group's parameters"):
            opt.step()


@requires_torch
class StateDictShapeTest(unittest.TestCase):
    def make(self, shapes):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
        opt = lowbit.AdamW8bit(ps, lr=1e-3)
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
        return ps, opt

    def test_shapes_are_checked(self):
        # (64, 32): float32 states; (128, 64): 8-bit codes shaped like it
        _, src = self.make([(64, 32), (128, 64)])
        sd = src.state_dict()
        _, dst = self.make([(32, 64), (128, 64)])
        image = bytes(dst.lowbit.state_image())
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"\['state'\]\[0\]\['state1'\]: shape \(64, 32\), "
                                                            r"this optimizer's needs \(32, 64\)"):
            dst.load_state_dict(sd)
        self.assertEqual(bytes(dst.lowbit.state_image()), image)

        _, dst = self.make([(64, 32), (128, 64)])
        image = bytes(dst.lowbit.state_image())

        def refused(i, key, value, pattern):
            bad = copy.deepcopy(sd)
            bad.pop("lowbit")  # bitsandbytes' form
            bad["state"][i][QUANT][key] = value
            with self.assertRaisesRegex(lowbit.InvalidArgument, pattern):
                dst.load_state_dict(bad)
            self.assertEqual(bytes(dst.lowbit.state_image()), image)

        q0, q1 = sd["state"][0][QUANT], sd["state"][1][QUANT]
        refused(0, "state1", q0["state1"].reshape(2048), r"\[0\]\['state1'\]: shape \(2048,\), .* \(64, 32\)")
        refused(0, "state2", q0["state2"].reshape(16, 128), r"\[0\]\['state2'\]: shape \(16, 128\)")
        refused(1, "state1", q1["state1"].reshape(-1), r"\[1\]\['state1'\]: shape \(8192,\), .* \(128, 64\)")
        refused(1, "absmax1", q1["absmax1"].reshape(4, 8), r"\[1\]\['absmax1'\]: shape \(4, 8\), .* \(32,\)")
        refused(1, "qmap2", q1["qmap2"].reshape(16, 16), r"\['qmap2'\]: shape \(16, 16\)")
        # bitsandbytes' own shapes load: per-element states shaped like the
        # parameter, absmax and qmap flat
        self.assertEqual(tuple(q1["state1"].shape), (128, 64))
        self.assertEqual(tuple(q1["absmax1"].shape), (32,))
        self.assertEqual(tuple(q1["qmap1"].shape), (256,))
        good = copy.deepcopy(sd)
        good.pop("lowbit")
        dst.load_state_dict(good)
        self.assertEqual(bytes(dst.lowbit.state_image()), bytes(src.lowbit.state_image()))

    def test_state_keys_must_be_int_indices(self):
        _, src = self.make([(64, 32)])
        sd = src.state_dict()
        sd["state"] = {"weight": sd["state"][0]}
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"key 'weight' is not a parameter index: the keys must "
                                                            r"be ints"):
            src.load_state_dict(sd)


@requires_torch
class MaxGradNormTest(unittest.TestCase):
    def run_qft(self, max_grad_norm, grad_scale=1.0, nan_layer=False):
        q = _qmodel(0, ((64, 64), (64, 32)))
        opt = tn.QuantizedWeightOptimizer(q, rule="adamw", fused=False, max_grad_norm=max_grad_norm, lr=1e-1,
                                          eps=1.0, weight_decay=0.0, seed=3)
        opt.grad_scale = grad_scale
        torch.manual_seed(1)
        (q(torch.randn(8, 64)) * 1000).pow(2).mean().backward()
        grads = [layer.weight_grad.clone() for layer in tn.quantized_linears(q)]
        if nan_layer:
            q[1].weight_grad[0, 0] = float("nan")
        report = opt.step()
        return report, [layer.weight_codes.clone() for layer in tn.quantized_linears(q)], grads

    def test_clips_by_the_global_norm(self):
        report, codes, grads = self.run_qft(1e-3)
        norm = float(np.sqrt(sum((g.double().numpy() ** 2).sum() for g in grads)))
        self.assertLessEqual(abs(report.grad_norm - norm), 1e-12 * norm)
        self.assertEqual(report.grad_scale, float(np.float32(1e-3 / (norm + 1e-6))))
        self.assertEqual(report.skipped, 0)
        _, same, _ = self.run_qft(0.0, grad_scale=report.grad_scale)
        _, unclipped, _ = self.run_qft(0.0)
        for a, b, c in zip(codes, same, unclipped):
            self.assertTrue(torch.equal(a, b))
            self.assertFalse(torch.equal(a, c))
        # no clipping under the bound; the report still gives the norm
        report, _, _ = self.run_qft(10 * norm)
        self.assertEqual(report.grad_scale, 1.0)
        self.assertLessEqual(abs(report.grad_norm - norm), 1e-12 * norm)
        # grad_scale counts in the norm; a non-finite gradient does not
        report, _, _ = self.run_qft(1e-3, grad_scale=0.5)
        self.assertLessEqual(abs(report.grad_norm - 0.5 * norm), 1e-12 * norm)
        report, _, grads = self.run_qft(1e-3, nan_layer=True)
        norm0 = float(np.sqrt((grads[0].double().numpy() ** 2).sum()))
        self.assertLessEqual(abs(report.grad_norm - norm0), 1e-12 * norm0)
        self.assertEqual(report.skipped, 1)

    def test_fused_refuses_max_grad_norm(self):
        q = _qmodel(0)
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"max_grad_norm needs fused=False"):
            tn.QuantizedWeightOptimizer(q, max_grad_norm=1.0)
        for bad in (-1.0, float("inf"), "x"):
            with self.assertRaisesRegex(lowbit.InvalidArgument, r"max_grad_norm"):
                tn.QuantizedWeightOptimizer(q, fused=False, max_grad_norm=bad)


@requires_torch
class TorchStateTest(unittest.TestCase):
    def test_state_marks_stepped_parameters(self):
        m = _linear_model(0)[0]
        opt = lowbit.AdamW8bit(m.parameters(), lr=1e-3)
        self.assertEqual(len(opt.state), 0)
        m.weight.grad = torch.ones_like(m.weight)
        opt.step()
        self.assertEqual(dict(opt.state[m.weight]), {"step": 1})
        self.assertNotIn(m.bias, opt.state)
        m.bias.grad = torch.ones_like(m.bias)
        opt.step()
        self.assertEqual([opt.state[p]["step"] for p in (m.weight, m.bias)], [2, 1])
        sd = opt.state_dict()
        m2 = _linear_model(0)[0]
        fresh = lowbit.AdamW8bit(m2.parameters(), lr=1e-3)
        fresh.load_state_dict(sd)
        self.assertEqual([fresh.state[p]["step"] for p in (m2.weight, m2.bias)], [2, 1])

    def test_distributed_checkpoint_takes_no_step(self):
        try:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        except ImportError:
            self.skipTest("torch.distributed.checkpoint is not available")
        m = _linear_model(0)
        opt = lowbit.AdamW8bit(m.parameters(), lr=1e-3)
        m(torch.randn(4, 64)).sum().backward()
        opt.step()
        opt.zero_grad()
        image = bytes(opt.lowbit.state_image())
        w = [p.detach().clone() for p in m.parameters()]
        sd = get_optimizer_state_dict(m, opt)
        self.assertEqual(len(sd["state"]), 2)
        self.assertEqual(bytes(opt.lowbit.state_image()), image)
        for p, p0 in zip(m.parameters(), w):
            self.assertTrue(torch.equal(p, p0))


@requires_torch
class MasterWeightsTest(unittest.TestCase):
    def make(self, model):
        return lowbit.LowbitOptimizer(model.parameters(), states="int8", weights="fp32_master_bf16", lr=1e-3,
                                      weight_decay=0.0, seed=4)

    def bf16_model(self, seed):
        return _linear_model(seed, ((64, 96),))[0].to(torch.bfloat16)

    def steps(self, model, opt, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g).to(torch.bfloat16)
            opt.step()

    def change(self, m, how, values):
        if how == "load_state_dict":
            m.load_state_dict(values)
        elif how == "copy_":
            with torch.no_grad():
                m.weight.copy_(values["weight"])
                m.bias.copy_(values["bias"])
        else:  # behind torch's version counter
            m.weight.data.copy_(values["weight"])
            m.bias.data.copy_(values["bias"])

    def test_change_before_the_first_step(self):
        pretrained = self.bf16_model(9).state_dict()
        ref_model = self.bf16_model(9)
        ref = self.make(ref_model)  # built after the change
        self.steps(ref_model, ref, 3, seed=1)
        for how in ("load_state_dict", "copy_", "data"):
            with self.subTest(how=how):
                m = self.bf16_model(0)
                opt = self.make(m)
                self.change(m, how, pretrained)
                if how == "data":
                    changed = sum(int((p != p0).sum()) for p, p0 in zip(self.bf16_model(0).parameters(),
                                                                        m.parameters()))
                    self.assertEqual(opt.reload_master_weights(), changed)
                self.steps(m, opt, 3, seed=1)
                for p, p2 in zip(m.parameters(), ref_model.parameters()):
                    self.assertTrue(torch.equal(p, p2))

    def test_change_during_training(self):
        pretrained = self.bf16_model(9).state_dict()
        for how in ("load_state_dict", "copy_", "data"):
            with self.subTest(how=how):
                m = self.bf16_model(0)
                opt = self.make(m)
                self.steps(m, opt, 2, seed=1)
                old = [p.detach().clone() for p in m.parameters()]
                masters = [opt.state_dict()["state"][i][QUANT]["master"] for i in range(2)]
                self.change(m, how, pretrained)
                if how == "data":
                    changed = sum(int((p != p0).sum()) for p, p0 in zip(old, m.parameters()))
                    self.assertEqual(opt.reload_master_weights(), changed)
                else:
                    m.zero_grad()
                    opt.step()  # no gradients: no update, but the masters are synced first
                now = [opt.state_dict()["state"][i][QUANT]["master"] for i in range(2)]
                for p, p0, mm, mm0 in zip(m.parameters(), old, now, masters):
                    same = p == p0
                    # changed elements take the new value, the others keep their float32 master
                    self.assertTrue(torch.equal(mm[~same], p[~same].float()))
                    self.assertTrue(torch.equal(mm[same], mm0[same]))
                self.steps(m, opt, 1, seed=2)
                self.assertLess((m.weight.float() - pretrained["weight"].float()).abs().max().item(), 0.01)

    def test_resume_keeps_masters(self):
        m = self.bf16_model(0)
        opt = self.make(m)
        self.steps(m, opt, 3, seed=1)
        msd, osd = copy.deepcopy(m.state_dict()), opt.state_dict()
        masters = [osd["state"][i][QUANT]["master"] for i in range(2)]
        self.assertFalse(all(torch.equal(mm, p.float()) for mm, p in zip(masters, m.parameters())))
        self.steps(m, opt, 3, seed=2)
        for order in ("model first", "optimizer first"):
            with self.subTest(order=order):
                m2 = self.bf16_model(5)
                opt2 = self.make(m2)
                if order == "model first":
                    m2.load_state_dict(msd)
                    opt2.load_state_dict(osd)
                else:
                    opt2.load_state_dict(osd)
                    m2.load_state_dict(msd)
                self.steps(m2, opt2, 3, seed=2)
                for p, p2 in zip(m.parameters(), m2.parameters()):
                    self.assertTrue(torch.equal(p, p2))

    def test_unchanged_parameters_cost_nothing(self):
        m = self.bf16_model(0)
        opt = self.make(m)
        self.steps(m, opt, 2, seed=1)
        self.assertEqual(opt.reload_master_weights(), 0)
        calls = []
        real = opt.lowbit.state_image
        opt.lowbit.state_image = lambda: calls.append(1) or real()
        self.steps(m, opt, 2, seed=2)
        self.assertEqual(calls, [])


@requires_torch
class BiasGradTest(unittest.TestCase):
    def test_float32_bias_with_bfloat16_activations(self):
        torch.manual_seed(0)
        q = tn.QuantizedLinear(64, 32)
        x = torch.randn(512, 64, dtype=torch.bfloat16)
        y = q(x)
        dy = torch.randn_like(y)
        y.backward(dy)
        self.assertEqual(q.bias.grad.dtype, torch.float32)
        self.assertTrue(torch.equal(q.bias.grad, dy.float().sum(0)))
        # a bfloat16 bias gets a bfloat16 gradient
        q16 = tn.QuantizedLinear(64, 32, dtype=torch.bfloat16)
        q16(x).backward(dy)
        self.assertEqual(q16.bias.grad.dtype, torch.bfloat16)
        self.assertTrue(torch.equal(q16.bias.grad, dy.float().sum(0).to(torch.bfloat16)))


@requires_torch
class CopyTest(unittest.TestCase):
    def test_optimizers_cannot_be_copied(self):
        m = _linear_model(0)
        q = _qmodel(0)
        for opt in (lowbit.AdamW8bit(m.parameters()), tn.QuantizedWeightOptimizer(q)):
            for how in (copy.copy, copy.deepcopy, lambda o: pickle.dump(o, io.BytesIO())):
                with self.assertRaisesRegex(TypeError, r"cannot be copied or pickled .*state_dict"):
                    how(opt)
        # the model itself still deep-copies (QuantizedLinear leaves the optimizer behind)
        q2 = copy.deepcopy(q)
        self.assertTrue(torch.equal(q2[0].weight_codes, q[0].weight_codes))


if __name__ == "__main__":
    unittest.main()
