"""Shared helpers of the lowbit Python tests: numpy (required), the lowbit
package, and independent float64/float32 references of the formats.

The codebooks below are written from the format notes (docs/FORMATS.md and
the shared FORMATS notes), not taken from the code under test.
"""

import os
import sys

try:
    import numpy as np
except ImportError as e:  # the suite must fail, not skip, without numpy
    raise ImportError(
        "the lowbit Python tests need numpy (Debian: apt-get install python3-numpy; or pip install numpy)"
    ) from e

_here = os.path.dirname(os.path.abspath(__file__))
_pkg = os.path.join(os.path.dirname(_here), "")
if _pkg not in sys.path and os.path.isdir(os.path.join(_pkg, "lowbit")):
    sys.path.insert(0, _pkg)

import lowbit  # noqa: E402

F32_EPS = 2.0 ** -24  # unit roundoff of float32
F16_EPS = 2.0 ** -11  # unit roundoff of float16

# ---- codebooks (value of code c, before multiplying by the block scale) ----

NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


def _fp4_table():
    # bit 3: sign; bits 2..0: magnitude in bitsandbytes' order, raw / 12
    raw = {0: 0.0, 1: 0.0625, 2: 8.0, 3: 12.0, 4: 4.0, 5: 6.0, 6: 2.0, 7: 3.0}
    t = np.zeros(16, dtype=np.float32)
    for c in range(16):
        v = np.float32(raw[c & 7] / 12.0)
        t[c] = -v if c & 8 else v
    return t


FP4 = _fp4_table()
# int4: two's-complement nibble q in -7..7 (code 8, q = -8, is never produced)
INT4 = np.array([(c - 16 if c >= 8 else c) / 7.0 for c in range(16)], dtype=np.float32)
INT4_VALID = np.array([c != 8 for c in range(16)])
# int8: the byte read as int8, q in -127..127
INT8 = np.array([(c - 256 if c >= 128 else c) / 127.0 for c in range(256)], dtype=np.float32)
INT8_VALID = np.array([c != 128 for c in range(256)])


def dynamic_map(signed):
    """bitsandbytes' 8-bit dynamic tree map: for i in 0..6, k values (2^i
    signed, 2^(i+1) unsigned) that are the midpoints of consecutive points
    of linspace(0.1, 1, k+1) in float32, times 10^(i-6); the signed map adds
    their negatives; then 0 and 1; sorted. Entries may differ from the
    library's by a float32 ulp (the tests allow for that)."""
    vals = []
    for i in range(7):
        k = 2 ** i if signed else 2 ** (i + 1)
        pts = np.linspace(0.1, 1.0, k + 1, dtype=np.float32)
        means = (pts[:-1] + pts[1:]) / np.float32(2.0)
        v = (np.float32(10.0 ** (i - 6)) * means).astype(np.float32)
        vals.extend(v.tolist())
        if signed:
            vals.extend((-v).tolist())
    vals.extend([0.0, 1.0])
    out = np.array(sorted(vals), dtype=np.float32)
    assert out.size == 256
    return out


DYN_SIGNED = dynamic_map(True)
DYN_UNSIGNED = dynamic_map(False)
assert DYN_SIGNED[0] == np.float32(-0.99296875) and DYN_SIGNED[127] == 0 and DYN_SIGNED[255] == 1
assert DYN_UNSIGNED[0] == 0 and DYN_UNSIGNED[255] == 1

TABLES = {"nf4": NF4, "fp4": FP4, "int4": INT4, "int8": INT8, "dynamic8": DYN_SIGNED, "udynamic8": DYN_UNSIGNED}
VALID = {"int4": INT4_VALID, "int8": INT8_VALID}
FOUR_BIT = {"nf4", "fp4", "int4"}
ZERO_CODE = {"nf4": 7, "fp4": 0, "int4": 0, "int8": 0, "dynamic8": 127, "udynamic8": 0}


def valid_values(fmt):
    t = TABLES[fmt].astype(np.float64)
    if fmt in VALID:
        t = t[VALID[fmt]]
    return np.unique(t)


def half_gap(table):
    """Half the largest gap between neighbouring values (the worst-case
    nearest-rounding error, in units of the block scale, over [-1, 1])."""
    t = np.unique(np.asarray(table, dtype=np.float64))
    pts = t
    if t[0] > -1.0 and t[0] < 0:  # signed map without -1: -1 rounds to t[0]
        pts = np.concatenate([[-1.0], t])
    return float(np.max(np.diff(pts)) / 2)


# ---- layout -----------------------------------------------------------------

def ceil_div(a, b):
    return -(-a // b)


def layout_bytes(fmt, numel, block_size, nested):
    """(code_bytes, n_blocks, n_nested_blocks, buffer bytes) from the layout
    rules: 4-bit codes two per byte, float32 absmax per block, or uint8 per
    block + float32 per 256 blocks + a float32 offset when nested."""
    code_bytes = ceil_div(numel, 2) if fmt in FOUR_BIT or fmt in ("dynamic4", "ulinear4") else numel
    n_blocks = ceil_div(numel, block_size)
    if nested:
        n_nested = ceil_div(n_blocks, 256)
        return code_bytes, n_blocks, n_nested, code_bytes + n_blocks + 4 * n_nested + 4
    return code_bytes, n_blocks, 0, code_bytes + 4 * n_blocks


def unpack_codes(q):
    """One integer code per element, read from q.codes (numpy buffers)."""
    raw = np.asarray(q.codes).astype(np.int64)
    if q.format in FOUR_BIT:
        codes = np.empty(raw.size * 2, dtype=np.int64)
        codes[0::2] = raw >> 4  # element 2j: high nibble
        codes[1::2] = raw & 15
        return codes[:q.numel], codes[q.numel:]
    return raw[:q.numel], raw[q.numel:]


def block_absmax(x32, block_size):
    n = x32.size
    nb = ceil_div(n, block_size)
    pad = np.zeros(nb * block_size, dtype=np.float64)
    pad[:n] = np.abs(x32.astype(np.float64))
    return pad.reshape(nb, block_size).max(axis=1)


def decoded_scales(q):
    """The block scales as the decoder uses them (float32): absmax, or with
    nested scales dyn_signed[code] * nested_absmax[b // 256] + offset."""
    if not q.nested:
        return np.asarray(q.absmax, dtype=np.float32).copy()
    codes = np.asarray(q.absmax_codes).astype(np.int64)
    nabs = np.asarray(q.nested_absmax, dtype=np.float32)
    off = np.float32(np.asarray(q.nested_offset, dtype=np.float32)[0])
    group = nabs[np.arange(codes.size) // 256]
    return (DYN_SIGNED[codes] * group + off).astype(np.float32)


def reference_dequantize(q):
    """float32 decode of q from its buffers with the tables above:
    table[code] * scale, one float32 multiply (shape q.shape)."""
    codes, _ = unpack_codes(q)
    scales = decoded_scales(q)
    per_elem = scales[np.arange(q.numel) // q.block_size]
    return (TABLES[q.format][codes] * per_elem).astype(np.float32).reshape(q.shape)


def random_blocks(rng, numel, block_size, dtype=np.float32, zero_block=False):
    """Normal data whose scale varies from block to block (1e-3 .. 1e2),
    optionally with an all-zero first block."""
    nb = ceil_div(numel, block_size)
    scale = np.exp(rng.uniform(np.log(1e-3), np.log(1e2), nb)).repeat(block_size)[:numel]
    x = (rng.standard_normal(numel) * scale).astype(dtype)
    if zero_block:
        x[:min(block_size, numel)] = 0
    return x


def parse_safetensors(path):
    """{name: (dtype, shape, raw bytes)} of a safetensors file (format
    facts: 8-byte little-endian header length, JSON header, data)."""
    import json
    import struct

    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], tuple(info["shape"]), body[b:e])
    return out, header.get("__metadata__", {})
