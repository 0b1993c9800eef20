"""Optimizer against float64 references (docs/OPTIMIZERS.md, "Formulas").

Tolerances:
- float32 states and weights (AdamW, Lion, SGD), 20 steps: |p - p_ref| <=
  4 * steps * 2^-24 * s, with s the largest |p| + |update| the element saw
  in the reference (four float32 roundings of that size per step; measured:
  under one). Hyperparameters enter the reference as their float32 values.
  Lion: elements where b1 m + (1-b1) g came within 1e-5 of its terms' size
  of 0 (sign undecidable in float32) are excluded; none are expected.
- int8 states (AdamW, 8192 elements, stochastic re-encoding): the
  displacement p - p0 has an RMS error <= 6% of the reference
  displacement's RMS, and every element's error is <= 10% of lr * steps
  (the most an element can move is about lr * steps; measured 2.3% / 3.2%).
- QFT-like (lion / int8 states / int8 weights, stochastic rounding): a
  weighted least-squares loss falls by a factor >= 30 in 300 steps
  (measured about 120).
- global-norm clipping: grad_norm and grad_scale within rel. 1e-6 of the
  float64 values, the clipped SGD step within rel. 1e-6; max_update:
  exact.
- everything else is bit-for-bit.
"""

import os
import shutil
import tempfile
import unittest

from lowbit_testing import lowbit, np, parse_safetensors, reference_dequantize

STEPS = 20
ULP = 2.0 ** -24


def f32(v):
    return float(np.float32(v))


def adam_ref(p0, grads, lr, b1, b2, eps, wd, decoupled=True):
    p = p0.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    scale = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = g.astype(np.float64)
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        c1 = 1 - b1 ** t
        c2 = np.sqrt(1 - b2 ** t)
        u = lr * c2 / c1 * m / (np.sqrt(v) + eps * c2)
        p = p - u
        scale = np.maximum(scale, np.abs(p) + np.abs(u))
    return p, scale


def lion_ref(p0, grads, lr, b1, b2, wd):
    p = p0.astype(np.float64)
    m = np.zeros_like(p)
    ambiguous = np.zeros(p.shape, bool)
    scale = np.zeros_like(p)
    for g in grads:
        g = g.astype(np.float64)
        u = b1 * m + (1 - b1) * g
        ambiguous |= np.abs(u) <= 1e-5 * (b1 * np.abs(m) + (1 - b1) * np.abs(g))
        p = p * (1 - lr * wd) - lr * np.sign(u)
        m = b2 * m + (1 - b2) * g
        scale = np.maximum(scale, np.abs(p) + lr)
    return p, scale, ambiguous


def sgd_ref(p0, grads, lr, mu, wd):
    p = p0.astype(np.float64)
    m = np.zeros_like(p)
    scale = np.zeros_like(p)
    for g in grads:
        g = g.astype(np.float64) + wd * p
        m = mu * m + g
        p = p - lr * m
        scale = np.maximum(scale, np.abs(p) + lr * np.abs(m))
    return p, scale


def data(seed, sizes, steps=STEPS):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(steps)]
    return p0, grads


def state_tensors(path, prefix=None, skip=("skipped", "step_count")):
    tensors, _ = parse_safetensors(path)
    return {k: v for k, v in tensors.items()
            if (prefix is None or k.startswith(prefix)) and k.rsplit(".", 1)[-1] not in skip}


class TempDirMixin:
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lowbit-test-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)


class Float32ReferenceTest(unittest.TestCase):
    def check(self, got, ref, scale, mask=None, label=""):
        err = np.abs(got.astype(np.float64) - ref)
        tol = 4 * STEPS * ULP * scale
        if mask is not None:
            err, tol = err[mask], tol[mask]
        self.assertTrue(np.all(err <= tol), "%s: excess %g" % (label, np.max(err - tol)))

    def test_adamw_and_adam(self):
        for rule in ("adamw", "adam"):
            lr, b1, b2, eps, wd = f32(1e-2), f32(0.9), f32(0.999), f32(1e-8), f32(0.05)
            p0, grads = data(11, (1000, 37))
            ws = [p.copy() for p in p0]
            with lowbit.Optimizer(rule, "fp32", "fp32", lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd) as opt:
                for w in ws:
                    opt.add_param(w)
                for g in grads:
                    r = opt.step(g)
                self.assertEqual((r.step, r.skipped), (STEPS, 0))
                self.assertEqual(opt.param_info(1).steps, STEPS)
            for i in range(2):
                ref, scale = adam_ref(p0[i], [g[i] for g in grads], lr, b1, b2, eps, wd, rule == "adamw")
                self.check(ws[i], ref, scale, label="%s param %d" % (rule, i))

    def test_lion(self):
        lr, b1, b2, wd = f32(1e-2), f32(0.9), f32(0.99), f32(0.1)
        p0, grads = data(12, (4096,))
        w = p0[0].copy()
        opt = lowbit.Optimizer("lion", "fp32", "fp32", lr=lr, betas=(b1, b2), weight_decay=wd)
        opt.add_param(w)
        for g in grads:
            opt.step(g)
        opt.close()
        ref, scale, ambiguous = lion_ref(p0[0], [g[0] for g in grads], lr, b1, b2, wd)
        self.assertLess(ambiguous.mean(), 0.01)
        self.check(w, ref, scale, ~ambiguous, "lion")

    def test_sgd_with_two_groups(self):
        lr, mu, wd = f32(1e-2), f32(0.9), f32(1e-2)
        lr1, mu1 = f32(3e-3), f32(0.5)
        p0, grads = data(13, (1000, 333))
        ws = [p.copy() for p in p0]
        opt = lowbit.Optimizer("sgd", "fp32", "fp32", lr=lr, momentum=mu, weight_decay=wd)
        self.assertEqual(opt.add_group(lr=lr1, momentum=mu1), 1)
        opt.add_param(ws[0], group=0)
        opt.add_param(ws[1], group=1)
        self.assertEqual(opt.param_info(1).group, 1)
        for g in grads:
            opt.step(g)
        ref0, s0 = sgd_ref(p0[0], [g[0] for g in grads], lr, mu, wd)
        ref1, s1 = sgd_ref(p0[1], [g[1] for g in grads], lr1, mu1, 0.0)  # add_group: default wd 0
        self.check(ws[0], ref0, s0, label="sgd group 0")
        self.check(ws[1], ref1, s1, label="sgd group 1")

    def test_clipping_and_max_update(self):
        # SGD without momentum, lr 1: p1 = p0 - g * scale exactly enough to
        # check scale = max_grad_norm / ||g|| (rel. 1e-6; the norm is summed
        # in float64 here, in float32 pieces there)
        rng = np.random.default_rng(14)
        gs = [rng.standard_normal(n).astype(np.float32) for n in (700, 50)]
        ws = [np.zeros(n, np.float32) for n in (700, 50)]
        opt = lowbit.Optimizer("sgd", "fp32", "fp32", lr=1.0, momentum=0.0, max_grad_norm=2.0)
        for w in ws:
            opt.add_param(w)
        r = opt.step(gs)
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in gs))
        self.assertLessEqual(abs(r.grad_norm - norm), 1e-6 * norm)
        self.assertLessEqual(abs(r.grad_scale - 2.0 / norm), 1e-6 * 2.0 / norm)
        for w, g in zip(ws, gs):
            np.testing.assert_allclose(w, -g.astype(np.float64) * 2.0 / norm, rtol=1e-6, atol=0)
        # max_update clamps every element's update to +-max_update
        w = np.zeros(100, np.float32)
        opt = lowbit.Optimizer("sgd", "fp32", "fp32", lr=1.0, momentum=0.0, max_update=0.25)
        opt.add_param(w)
        g = np.linspace(-1, 1, 100).astype(np.float32)
        opt.step([g])
        np.testing.assert_array_equal(w, np.clip(-g, -0.25, 0.25))

    def test_hparams_roundtrip_and_defaults(self):
        opt = lowbit.Optimizer("adamw", "fp32", "fp32")
        self.assertEqual(opt.hparams(0), {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2})
        opt.set_hparams(0, lr=0.25, betas=(0.5, 0.75))
        self.assertEqual(opt.hparams(0), {"lr": 0.25, "betas": (0.5, 0.75), "eps": 1e-8, "weight_decay": 1e-2})
        self.assertEqual(lowbit.Optimizer("lion", "fp32", "fp32").hparams(0),
                         {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0})
        self.assertEqual(lowbit.Optimizer("sgd", "fp32", "fp32").hparams(0),
                         {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.0})
        with self.assertRaises(lowbit.InvalidArgument):
            lowbit.Optimizer("lion", "fp32", "fp32", eps=1e-6)  # Lion has no eps
        self.assertIn("adamw/fp32/fp32/host", lowbit.compositions())
        self.assertIn("lion/int8/int8/host", lowbit.compositions())
        self.assertEqual(opt.composition, "adamw/fp32/fp32/host")
        self.assertEqual(lowbit.Optimizer("lion", "int8", "nf4", memory="host").composition, "lion/int8/nf4/host")


class QuantizedStatesTest(unittest.TestCase):
    def test_int8_adamw_close_to_reference(self):
        lr, b1, b2, eps, wd = f32(1e-2), f32(0.9), f32(0.999), f32(1e-8), f32(1e-2)
        p0, grads = data(21, (8192,))
        w = p0[0].copy()
        opt = lowbit.Optimizer("adamw", "int8", "fp32", lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, seed=3)
        opt.add_param(w)
        for g in grads:
            opt.step(g)
        ref, _ = adam_ref(p0[0], [g[0] for g in grads], lr, b1, b2, eps, wd)
        disp_ref = ref - p0[0]
        err = w.astype(np.float64) - ref
        self.assertLessEqual(np.sqrt(np.mean(err ** 2)), 0.06 * np.sqrt(np.mean(disp_ref ** 2)))
        self.assertLessEqual(np.max(np.abs(err)), 0.10 * lr * STEPS)

    def test_qft_least_squares(self):
        n = 8192
        rng = np.random.default_rng(31)
        target = rng.standard_normal(n) * 0.1
        d = rng.uniform(0.5, 2.0, n)
        q = lowbit.quantize((rng.standard_normal(n) * 0.1).astype(np.float32), "int8", block_size=256)
        opt = lowbit.Optimizer("lion", "int8", "int8", lr=2e-3, seed=5)
        opt.add_param(q, name="w")

        def loss():
            return 0.5 * np.mean(d * (reference_dequantize(q).astype(np.float64) - target) ** 2)

        start = loss()
        for _ in range(300):
            g = (d * (reference_dequantize(q).astype(np.float64) - target)).astype(np.float32)
            opt.step([g])
        self.assertLess(loss(), start / 30)
        self.assertEqual(opt.param_info(0).steps, 300)


class BehaviourTest(TempDirMixin, unittest.TestCase):
    def test_nonfinite_gradient_skipped(self):
        p0, grads = data(41, (8192, 100), steps=4)
        ws = [p.copy() for p in p0]
        opt = lowbit.Optimizer("adamw", "int8", "fp32", lr=1e-2)
        opt.add_param(ws[0], name="a")
        opt.add_param(ws[1], name="b")
        for g in grads[:3]:
            opt.step(g)
        opt.save(self.path("before.safetensors"))
        before = [w.copy() for w in ws]
        bad = grads[3][0].copy()
        bad[5000] = np.nan
        r = opt.step([bad, grads[3][1]])
        self.assertEqual(r.skipped, 1)
        self.assertEqual(ws[0].tobytes(), before[0].tobytes())  # bitwise unchanged
        self.assertFalse(np.array_equal(ws[1], before[1]))  # the finite one was updated
        info = opt.param_info(0)
        self.assertEqual((info.steps, info.skipped), (3, 1))
        self.assertEqual(opt.param_info(1).steps, 4)
        opt.save(self.path("after.safetensors"))
        a = state_tensors(self.path("before.safetensors"), "optimizer.a.")
        b = state_tensors(self.path("after.safetensors"), "optimizer.a.")
        self.assertGreaterEqual(len(a), 6)  # state1/2, absmax1/2, qmap1/2, step
        self.assertEqual(a, b)  # states bitwise unchanged
        # an infinite gradient through step_param
        opt.begin_step()
        inf = grads[3][0].copy()
        inf[0] = np.inf
        self.assertFalse(opt.step_param(0, inf))
        self.assertEqual(opt.end_step().skipped, 1)
        self.assertEqual(ws[0].tobytes(), before[0].tobytes())

    def test_save_load_resume_bit_exact(self):
        n = 8192
        p0, grads = data(51, (n, 300), steps=10)
        init = [lowbit.quantize(p0[0], "int8", block_size=256), p0[1].copy()]

        def make(weights):
            opt = lowbit.Optimizer("lion", "int8", "int8", lr=1e-3, seed=77)
            opt.add_param(weights[0], name="q")
            return opt

        # uninterrupted: 10 steps (a second optimizer takes the dense param
        # with another composition)
        qa = init[0].copy()
        oa = make([qa])
        for g in grads:
            oa.step([g[0]])
        # interrupted after 5 steps; a fresh optimizer loads the states
        qb = init[0].copy()
        ob = make([qb])
        for g in grads[:5]:
            ob.step([g[0]])
        ob.save(self.path("mid.safetensors"))
        ob.close()
        qc = qb.copy()
        oc = make([qc])
        oc.load(self.path("mid.safetensors"))
        self.assertEqual(oc.param_info(0).steps, 5)
        for g in grads[5:]:
            oc.step([g[0]])
        for name in ("codes", "absmax"):
            self.assertEqual(getattr(qa, name).tobytes(), getattr(qc, name).tobytes(), name)
        oa.save(self.path("a.safetensors"))
        oc.save(self.path("c.safetensors"))
        self.assertEqual(state_tensors(self.path("a.safetensors"), skip=()),
                         state_tensors(self.path("c.safetensors"), skip=()))

        # the same with fp32 weights and Adam's bias correction (int8 states)
        def make_adam(w):
            opt = lowbit.Optimizer("adamw", "int8", "fp32", lr=1e-2, seed=9)
            opt.add_param(w, name="w")
            return opt

        wa = p0[0].copy()
        oa = make_adam(wa)
        for g in grads:
            oa.step([g[0]])
        wb = p0[0].copy()
        ob = make_adam(wb)
        for g in grads[:5]:
            ob.step([g[0]])
        ob.save(self.path("adam.safetensors"))
        wc = wb.copy()
        oc = make_adam(wc)
        oc.load(self.path("adam.safetensors"))
        for g in grads[5:]:
            oc.step([g[0]])
        self.assertEqual(wa.tobytes(), wc.tobytes())

    def test_step_param_equals_step(self):
        p0, grads = data(61, (8192, 500, 64), steps=5)
        wa = [p.copy() for p in p0]
        wb = [p.copy() for p in p0]
        oa = lowbit.Optimizer("adamw", "int8", "fp32", lr=1e-2, seed=4)
        ob = lowbit.Optimizer("adamw", "int8", "fp32", lr=1e-2, seed=4)
        for w in wa:
            oa.add_param(w)
        for w in wb:
            ob.add_param(w)
        for g in grads:
            # grad_scale 0.5 is exact, so it equals halving the gradient
            ra = oa.step([x * np.float32(0.5) for x in g])
            ob.begin_step()
            for i in reversed(range(3)):  # any order
                self.assertTrue(ob.step_param(i, g[i], grad_scale=0.5))
            rb = ob.end_step()
            self.assertEqual((ra.step, ra.skipped), (rb.step, rb.skipped))
            self.assertEqual(rb.grad_norm, -1.0)  # a per-tensor step computes no global norm
        for x, y in zip(wa, wb):
            self.assertEqual(x.tobytes(), y.tobytes())
        oa.save(self.path("a.safetensors"))
        ob.save(self.path("b.safetensors"))
        self.assertEqual(state_tensors(self.path("a.safetensors"), skip=()),
                         state_tensors(self.path("b.safetensors"), skip=()))
        # a parameter without a gradient is left alone
        before = [w.copy() for w in wb]
        ob.begin_step()
        ob.step_param(0, grads[0][0])
        ob.end_step()
        self.assertEqual(wb[1].tobytes(), before[1].tobytes())
        self.assertEqual(wb[2].tobytes(), before[2].tobytes())
        self.assertEqual(ob.param_info(1).steps, 5)

    def test_memory_report(self):
        big, small = 8192, 1000
        # fp32 states: 8 bytes per element (m and v), fp32 weights: 4
        opt = lowbit.Optimizer("adamw", "fp32", "fp32")
        opt.add_param(np.zeros(big, np.float32))
        opt.add_param(np.zeros(small, np.float32))
        m = opt.memory()
        n = big + small
        self.assertEqual((m.params, m.weight_bytes, m.master_bytes, m.state_bytes), (n, 4 * n, 0, 8 * n))
        self.assertEqual(m.bytes_per_param, 12.0)
        # int8 states: 2 bytes + 2 float32 scales per 256 elements, for
        # tensors of >= 4096 elements; smaller ones keep float32 states
        opt = lowbit.Optimizer("adamw", "int8", "fp32")
        opt.add_param(np.zeros(big, np.float32))
        m1 = opt.memory()
        self.assertEqual(m1.state_bytes, 2 * big + 2 * 4 * (big // 256))
        self.assertAlmostEqual(m1.bytes_per_param, 4 + 2 + 8 / 256)
        opt.add_param(np.zeros(small, np.float32))
        self.assertEqual(opt.memory().state_bytes, 2 * big + 2 * 4 * (big // 256) + 8 * small)
        # QFT: int8 weights (block 256) + one int8 state: 2.03125 bytes per parameter
        q = lowbit.quantize(np.ones(big, np.float32), "int8", block_size=256)
        opt = lowbit.Optimizer("lion", "int8", "int8")
        opt.add_param(q)
        m = opt.memory()
        self.assertEqual(m.weight_bytes, q.nbytes)
        self.assertEqual(m.weight_bytes, big + 4 * (big // 256))
        self.assertEqual(m.state_bytes, big + 4 * (big // 256))
        self.assertAlmostEqual(m.bytes_per_param, 2.03125)

    def test_keeps_weights_alive(self):
        import gc
        import weakref

        opt = lowbit.Optimizer("sgd", "fp32", "fp32", lr=0.5, momentum=0.0)
        w = np.ones(64, np.float32)
        ref = weakref.ref(w)
        opt.add_param(w)
        del w
        gc.collect()
        self.assertIsNotNone(ref())  # the optimizer holds it
        opt.step([np.ones(64, np.float32)])
        np.testing.assert_array_equal(ref(), np.full(64, 0.5, np.float32))
        opt.close()
        gc.collect()
        self.assertIsNone(ref())  # and lets go when closed
        with self.assertRaises(lowbit.InvalidArgument):
            opt.step([np.ones(64, np.float32)])


if __name__ == "__main__":
    unittest.main()
