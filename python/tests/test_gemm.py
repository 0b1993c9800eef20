"""dequant_linear / dequant_linear_backward_input against float64 products.

W is decoded from the quantized buffers by the tests' own reference
(lowbit_testing.reference_dequantize), x / dy are exact in float64, and the
products are computed in float64. Bound (float32 accumulation of a length-L
dot product, L = k forward, n backward): |y - y_ref| <= (L + 2) 2^-24
(|x| |W|^T + |bias|), plus half a float16 ulp of |y_ref| for float16
outputs, plus 2^-21 sum|x| max|W| for the reference decode's table margin
(see test_quantize).
"""

import unittest

from lowbit_testing import F16_EPS, F32_EPS, lowbit, np, random_blocks, reference_dequantize

# (format, block, nested, n, k): n odd, k not a multiple of the block
WEIGHTS = [
    ("nf4", 64, False, 37, 100),
    ("int8", 128, True, 33, 200),
    ("fp4", 32, False, 5, 49),
    ("int4", 64, True, 41, 72),
]


def bound(a, w_abs, length, extra_abs, out_dtype, y_ref):
    tol = (length + 2) * F32_EPS * (np.abs(a) @ w_abs + extra_abs)
    tol += 2.0 ** -21 * np.abs(a).sum(axis=1, keepdims=True) * w_abs.max()
    if out_dtype == np.float16:
        tol += F16_EPS * np.abs(y_ref) + 2.0 ** -25
    return tol


class GemmTest(unittest.TestCase):
    def setUp(self):
        self.rng = np.random.default_rng(99)

    def make_weight(self, fmt, bs, nested, n, k):
        w = random_blocks(self.rng, n * k, bs).reshape(n, k)
        q = lowbit.quantize(w, fmt, block_size=bs, nested=nested)
        return q, reference_dequantize(q).astype(np.float64)

    def test_forward_backward(self):
        for fmt, bs, nested, n, k in WEIGHTS:
            q, wd = self.make_weight(fmt, bs, nested, n, k)
            for m in (1, 3, 17):
                for dt in (np.float32, np.float16):
                    for use_bias in (False, True):
                        label = "%s n=%d k=%d M=%d %s bias=%s" % (fmt, n, k, m, np.dtype(dt).name, use_bias)
                        with self.subTest(label):
                            x = self.rng.standard_normal((m, k)).astype(dt)
                            bias = self.rng.standard_normal(n).astype(np.float32) if use_bias else None
                            y = lowbit.dequant_linear(x, q, bias=bias)
                            self.assertEqual((y.dtype, y.shape), (np.dtype(dt), (m, n)))
                            x64 = x.astype(np.float64)
                            ref = x64 @ wd.T + (bias.astype(np.float64) if use_bias else 0)
                            tol = bound(x64, np.abs(wd).T, k, np.abs(bias) if use_bias else 0, dt, ref)
                            err = np.abs(y.astype(np.float64) - ref)
                            self.assertTrue(np.all(err <= tol), "%s: excess %g" % (label, np.max(err - tol)))

                            dy = self.rng.standard_normal((m, n)).astype(dt)
                            dx = lowbit.dequant_linear_backward_input(dy, q)
                            self.assertEqual((dx.dtype, dx.shape), (np.dtype(dt), (m, k)))
                            dy64 = dy.astype(np.float64)
                            ref = dy64 @ wd
                            tol = bound(dy64, np.abs(wd), n, 0, dt, ref)
                            err = np.abs(dx.astype(np.float64) - ref)
                            self.assertTrue(np.all(err <= tol), "%s backward: excess %g" % (label, np.max(err - tol)))

    def test_vector_and_batched_inputs_and_out(self):
        q, wd = self.make_weight("nf4", 64, False, 37, 100)
        x1 = self.rng.standard_normal(100).astype(np.float32)
        y1 = lowbit.dequant_linear(x1, q)
        self.assertEqual(y1.shape, (37,))
        ref = wd @ x1.astype(np.float64)
        tol = 102 * F32_EPS * (np.abs(wd) @ np.abs(x1)) + 2.0 ** -21 * np.abs(x1).sum() * np.abs(wd).max()
        self.assertTrue(np.all(np.abs(y1 - ref) <= tol))
        # a (2, 3, k) batch gives (2, 3, n), equal row by row to the 2-D call
        x3 = self.rng.standard_normal((2, 3, 100)).astype(np.float32)
        y3 = lowbit.dequant_linear(x3, q)
        self.assertEqual(y3.shape, (2, 3, 37))
        np.testing.assert_array_equal(y3.reshape(6, 37), lowbit.dequant_linear(x3.reshape(6, 100), q))
        # out= is written and returned
        out = np.full((6, 37), np.nan, np.float32)
        r = lowbit.dequant_linear(x3.reshape(6, 100), q, out=out)
        self.assertIs(r, out)
        np.testing.assert_array_equal(out, y3.reshape(6, 37))
        dx = np.full((6, 100), np.nan, np.float32)
        dy = self.rng.standard_normal((6, 37)).astype(np.float32)
        self.assertIs(lowbit.dequant_linear_backward_input(dy, q, out=dx), dx)
        ref = dy.astype(np.float64) @ wd
        tol = bound(dy.astype(np.float64), np.abs(wd), 37, 0, np.float32, ref)
        self.assertTrue(np.all(np.abs(dx - ref) <= tol))

    def test_bad_shapes(self):
        q, _ = self.make_weight("nf4", 64, False, 37, 100)
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.dequant_linear(np.zeros((3, 99), np.float32), q)
        self.assertIn("x", str(cm.exception))
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.dequant_linear(np.zeros((3, 100), np.float32), q, bias=np.zeros(36, np.float32))
        self.assertIn("bias", str(cm.exception))
        flat = lowbit.quantize(np.ones(3700, np.float32), "nf4")
        with self.assertRaises(lowbit.InvalidArgument):
            lowbit.dequant_linear(np.zeros((3, 100), np.float32), flat)  # not 2-D


if __name__ == "__main__":
    unittest.main()
