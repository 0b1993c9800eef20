"""quantize / dequantize against an independent numpy reference.

For every case: the float32 absmax per block equals max|x| of the block
exactly; every code is the nearest table value to x * (1/absmax) (within
1e-6 of the best distance, in units of the scale: the margin for float32
rounding of the product and ties, which random data makes improbable);
the padding nibble of an odd 4-bit tensor is the zero code; an all-zero
block decodes to exact zeros; dequantize equals table[code] * scale
(float32 multiply) within 2^-21 of the block scale (an entry of the
generated dynamic map may be two float32 ulps off: linspace is evaluated
differently by numpy, torch and lowbit), plus, for nested scales, 2^-22
of the nested absmax (the scale map's entries enter the
scale multiplied by it); |x - deq| is within
the format's worst-case rounding error (half the largest table gap times
the scale, plus the scale error for nested scales); float16 output equals
the float32 output rounded to float16 (within half a float16 ulp).
Nested scales: offset = mean(absmax) (rel. 1e-6), nested_absmax =
max |absmax - offset| per 256 blocks (rel. 1e-6), scale codes nearest in
the signed dynamic map, and |decoded scale - absmax| <= half the map's
largest gap times nested_absmax.
"""

import unittest

from lowbit_testing import (DYN_SIGNED, F16_EPS, FOUR_BIT, TABLES, ZERO_CODE, block_absmax, ceil_div,
                            decoded_scales, half_gap, layout_bytes, lowbit, np, random_blocks,
                            reference_dequantize, unpack_codes, valid_values)

NEAREST_SLACK = 1e-6
TABLE_TOL = 2.0 ** -21

# (format, block_size, nested, shape, input dtype, all-zero first block)
CASES = [
    ("nf4", 64, False, (4096,), np.float32, True),
    ("nf4", 64, False, (1001,), np.float32, False),   # odd, not a multiple of the block
    ("nf4", 32, False, (7, 33), np.float16, False),
    ("nf4", 4096, False, (5000,), np.float32, False),
    ("fp4", 64, False, (999,), np.float32, True),
    ("fp4", 128, False, (3000,), np.float16, False),
    ("int4", 64, False, (777,), np.float32, False),
    ("int4", 256, False, (2048,), np.float16, True),
    ("int8", 256, False, (1000,), np.float32, True),
    ("int8", 64, False, (3, 100), np.float16, False),
    ("dynamic8", 256, False, (1234,), np.float32, False),
    ("dynamic8", 4096, False, (9000,), np.float16, True),
    ("nf4", 64, True, (64 * 300 + 17,), np.float32, True),  # 301 blocks: two nested groups
    ("nf4", 32, True, (1,), np.float32, False),
    ("int8", 128, True, (128 * 600 + 5,), np.float16, False),
    ("int8", 64, True, (2, 500), np.float32, False),
]


def check_case(tc, fmt, bs, nested, shape, dtype, zero_block, rng):
    numel = int(np.prod(shape))
    x = random_blocks(rng, numel, bs, dtype, zero_block).reshape(shape)
    q = lowbit.quantize(x, fmt, block_size=bs, nested=nested)
    label = "%s bs=%d nested=%s shape=%s %s" % (fmt, bs, nested, shape, np.dtype(dtype).name)

    # structure: numpy buffers of the layout's sizes
    code_bytes, n_blocks, n_nested, total = layout_bytes(fmt, numel, bs, nested)
    tc.assertIsInstance(q, lowbit.QuantizedTensor)
    tc.assertEqual((q.format, q.shape, q.numel, q.block_size, q.nested), (fmt, tuple(shape), numel, bs, nested))
    tc.assertIsInstance(q.codes, np.ndarray, label)
    tc.assertEqual((q.codes.dtype, q.codes.shape), (np.uint8, (code_bytes,)), label)
    if nested:
        tc.assertIsNone(q.absmax, label)
        tc.assertEqual((q.absmax_codes.dtype, q.absmax_codes.shape), (np.uint8, (n_blocks,)), label)
        tc.assertEqual((q.nested_absmax.dtype, q.nested_absmax.shape), (np.float32, (n_nested,)), label)
        tc.assertEqual((q.nested_offset.dtype, q.nested_offset.shape), (np.float32, (1,)), label)
    else:
        tc.assertEqual((q.absmax.dtype, q.absmax.shape), (np.float32, (n_blocks,)), label)
        tc.assertIsNone(q.absmax_codes, label)
    tc.assertEqual(q.nbytes, total, label)

    x32 = x.astype(np.float32).ravel()
    s_true = block_absmax(x32, bs)  # exact: a max of float32 values
    if not nested:
        np.testing.assert_array_equal(q.absmax.astype(np.float64), s_true, err_msg=label)

    # codes: nearest table value to x * (1/absmax) (computed in float32)
    codes, pad = unpack_codes(q)
    table = TABLES[fmt].astype(np.float64)
    per_elem = s_true[np.arange(numel) // bs].astype(np.float32)
    with np.errstate(divide="ignore"):
        recip = np.where(per_elem > 0, np.float32(1) / per_elem, np.float32(0)).astype(np.float32)
    xs = (x32 * recip).astype(np.float64)
    vals = valid_values(fmt)
    best = np.min(np.abs(xs[:, None] - vals[None, :]), axis=1)
    chosen = np.abs(xs - table[codes])
    bad = np.nonzero(chosen > best + NEAREST_SLACK)[0]
    tc.assertEqual(bad.size, 0, "%s: codes not nearest at %s" % (label, bad[:5]))
    if fmt in FOUR_BIT and numel % 2:
        tc.assertEqual(pad.tolist(), [ZERO_CODE[fmt]], label + ": padding nibble")
    if zero_block:
        tc.assertTrue(np.all(table[codes[:min(bs, numel)]] == 0), label + ": zero block codes")

    # scales
    s_dec = decoded_scales(q).astype(np.float64)
    scale_err = np.zeros_like(s_true)
    if nested:
        offset = float(q.nested_offset[0])
        mean = float(np.mean(s_true))
        tc.assertLessEqual(abs(offset - mean), 1e-6 * mean, label + ": nested offset")
        dev = s_true - offset
        groups = ceil_div(s_true.size, 256)
        want_nabs = np.array([np.max(np.abs(dev[g * 256:(g + 1) * 256])) for g in range(groups)])
        np.testing.assert_allclose(q.nested_absmax.astype(np.float64), want_nabs, rtol=1e-6, err_msg=label)
        nabs = q.nested_absmax.astype(np.float64)[np.arange(s_true.size) // 256]
        norm = np.where(nabs > 0, dev / np.where(nabs > 0, nabs, 1), 0.0)
        dyn = np.unique(DYN_SIGNED.astype(np.float64))
        best_s = np.min(np.abs(norm[:, None] - dyn[None, :]), axis=1)
        chosen_s = np.abs(norm - DYN_SIGNED.astype(np.float64)[q.absmax_codes.astype(np.int64)])
        tc.assertTrue(np.all(chosen_s <= best_s + NEAREST_SLACK), label + ": scale codes not nearest")
        bound = half_gap(DYN_SIGNED) * nabs * (1 + 1e-5) + 1e-6 * s_true
        scale_err = np.abs(s_dec - s_true)
        tc.assertTrue(np.all(scale_err <= bound), label + ": decoded scale error %g" % np.max(scale_err - bound))

    # dequantize (float32) vs the reference decode
    deq = lowbit.dequantize(q)
    tc.assertIsInstance(deq, np.ndarray)
    tc.assertEqual((deq.dtype, deq.shape), (np.float32, tuple(shape)), label)
    ref = reference_dequantize(q).astype(np.float64).ravel()
    s_elem = s_dec[np.arange(numel) // bs]
    tol = TABLE_TOL * s_elem
    if nested:
        # a scale-map entry two float32 ulps off (|entry| <= 1: <= 2^-23) or a
        # fused multiply-add moves the decoded scale by <= 2^-22 nested_absmax
        tol = tol + 2.0 ** -22 * q.nested_absmax.astype(np.float64)[np.arange(numel) // bs // 256]
    diff = np.abs(deq.astype(np.float64).ravel() - ref)
    tc.assertTrue(np.all(diff <= tol), label + ": dequantize vs reference, max excess %g" % np.max(diff - tol))
    if zero_block:
        tc.assertTrue(np.all(deq.ravel()[:min(bs, numel)] == 0), label + ": zero block decodes to 0")

    # worst-case error of the format
    err = np.abs(x32.astype(np.float64) - deq.astype(np.float64).ravel())
    bound = half_gap(TABLES[fmt] if fmt not in ("int4", "int8") else valid_values(fmt)) * s_true
    bound = (bound + scale_err)[np.arange(numel) // bs] + tol + 1e-30
    tc.assertTrue(np.all(err <= bound), label + ": |x - deq| over the bound by %g" % np.max(err - bound))

    # float16 output: the float32 result rounded to float16
    deq16 = lowbit.dequantize(q, dtype="float16")
    tc.assertEqual(deq16.dtype, np.float16)
    d32 = deq.astype(np.float64).ravel()
    d16 = deq16.astype(np.float64).ravel()
    tol16 = F16_EPS * np.abs(d32) + 2.0 ** -25  # half an ulp (subnormals: 2^-25)
    tc.assertTrue(np.all(np.abs(d16 - d32) <= tol16), label + ": float16 output")
    return q


class QuantizeTest(unittest.TestCase):
    def test_formats_against_reference(self):
        rng = np.random.default_rng(20261201)
        for case in CASES:
            with self.subTest(case=case[:5]):
                check_case(self, *case, rng=rng)

    def test_udynamic8_nonnegative(self):
        rng = np.random.default_rng(7)
        x = np.abs(random_blocks(rng, 3000, 256))
        q = check_case_nonneg(self, x)
        self.assertEqual(q.format, "udynamic8")

    def test_dequantize_into_out(self):
        rng = np.random.default_rng(3)
        x = random_blocks(rng, 640, 64).reshape(10, 64)
        q = lowbit.quantize(x, "nf4")
        out = np.full((640,), np.nan, dtype=np.float32)
        r = lowbit.dequantize(q, out=out)
        self.assertIs(r, out)
        np.testing.assert_array_equal(out, reference_dequantize(q).ravel())

    def test_quantize_into_existing(self):
        rng = np.random.default_rng(4)
        x = random_blocks(rng, 1000, 64)
        q = lowbit.QuantizedTensor.empty("int8", (1000,), 64, False)
        r = lowbit.quantize(x, "int8", out=q)
        self.assertIs(r, q)
        np.testing.assert_array_equal(q.absmax.astype(np.float64), block_absmax(x, 64))

    def test_roundtrip_is_idempotent_for_nf4(self):
        # quantize(dequantize(q)) == q for float32 scales (docs/FORMATS.md)
        rng = np.random.default_rng(5)
        x = random_blocks(rng, 4097, 64)
        q = lowbit.quantize(x, "nf4")
        q2 = lowbit.quantize(lowbit.dequantize(q), "nf4")
        np.testing.assert_array_equal(q.codes, q2.codes)
        np.testing.assert_array_equal(q.absmax, q2.absmax)


def check_case_nonneg(tc, x):
    q = lowbit.quantize(x, "udynamic8", block_size=256)
    s = block_absmax(x, 256)
    np.testing.assert_array_equal(q.absmax.astype(np.float64), s)
    codes, _ = unpack_codes(q)
    per = s[np.arange(x.size) // 256].astype(np.float32)
    xs = (x * (np.float32(1) / per)).astype(np.float64)
    vals = valid_values("udynamic8")
    best = np.min(np.abs(xs[:, None] - vals[None, :]), axis=1)
    tc.assertTrue(np.all(np.abs(xs - TABLES["udynamic8"][codes]) <= best + NEAREST_SLACK))
    deq = lowbit.dequantize(q).astype(np.float64)
    ref = reference_dequantize(q).astype(np.float64)
    tc.assertTrue(np.all(np.abs(deq - ref) <= TABLE_TOL * per))
    return q


def decode_table(fmt):
    """The library's table: codes 0..N-1 decoded with absmax 1."""
    n = 16 if fmt in FOUR_BIT else 256
    c = np.arange(n, dtype=np.uint8)
    packed = ((c[0::2] << 4) | c[1::2]).astype(np.uint8) if n == 16 else c
    q = lowbit.QuantizedTensor(fmt, (n,), 32 if n == 16 else 256, False, packed, absmax=np.ones(1, np.float32))
    return lowbit.dequantize(q)


class TableTest(unittest.TestCase):
    def test_fixed_tables_exact(self):
        # NF4 / FP4 / int4 / int8 decode to the documented values exactly
        for fmt in ("nf4", "fp4", "int4", "int8"):
            with self.subTest(fmt=fmt):
                got = decode_table(fmt)
                want = TABLES[fmt]
                mask = np.ones(want.size, bool) if fmt not in ("int4", "int8") else valid_values_mask(fmt)
                np.testing.assert_array_equal(got[mask], want[mask])

    def test_dynamic_maps(self):
        # anchors exact, every entry within 4 float32 ulps of the
        # independently generated map (linspace's evaluation order differs
        # between numpy, torch and lowbit: up to 2 ulps seen), increasing
        for fmt, anchors in (("dynamic8", {0: -0.99296875, 127: 0.0, 255: 1.0}),
                             ("udynamic8", {0: 0.0, 255: 1.0})):
            with self.subTest(fmt=fmt):
                got = decode_table(fmt).astype(np.float64)
                for i, v in anchors.items():
                    self.assertEqual(got[i], np.float32(v))
                want = TABLES[fmt].astype(np.float64)
                ulps = np.spacing(np.abs(TABLES[fmt])).astype(np.float64)
                self.assertTrue(np.all(np.abs(got - want) <= 4 * ulps), fmt)
                self.assertTrue(np.all(np.diff(got) > 0), fmt)


def valid_values_mask(fmt):
    from lowbit_testing import VALID
    return VALID[fmt]


class LayoutTest(unittest.TestCase):
    def test_nbytes_and_sizes(self):
        for fmt in ("nf4", "fp4", "int4", "int8", "dynamic8"):
            for numel in (1, 63, 64, 65, 1001, 64 * 256 * 3 + 1):
                for bs in (32, 64, 4096):
                    for nested in (False, True):
                        with self.subTest(fmt=fmt, numel=numel, bs=bs, nested=nested):
                            code_bytes, n_blocks, n_nested, total = layout_bytes(fmt, numel, bs, nested)
                            q = lowbit.QuantizedTensor.empty(fmt, (numel,), bs, nested)
                            self.assertEqual(q.nbytes, total)
                            self.assertAlmostEqual(q.bits_per_param, 8.0 * total / numel)
                            s = lowbit.quantized_sizes(fmt, numel, bs, nested)
                            self.assertEqual((s.code_bytes, s.n_blocks, s.n_nested_blocks),
                                             (code_bytes, n_blocks, n_nested))
                            # C++'s layout counts codes + scales + nested absmax (not the offset)
                            self.assertEqual(s.total_bytes, total - (4 if nested else 0))

    def test_nf4_nested_bits_per_param(self):
        n = 64 * 256 * 64  # 1M elements
        q = lowbit.QuantizedTensor.empty("nf4", (n,), 64, True)
        # 4 + 8/64 + 32/(64*256) bits, plus the 32-bit offset spread over n
        self.assertAlmostEqual(q.bits_per_param, 4 + 8 / 64 + 32 / (64 * 256) + 32 / n, places=12)
        self.assertAlmostEqual(lowbit.QuantizedTensor.empty("nf4", (n,), 64, False).bits_per_param, 4.5, places=12)


if __name__ == "__main__":
    unittest.main()
