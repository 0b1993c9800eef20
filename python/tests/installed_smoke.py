"""Run by check_pip_install.sh with the Python of a venv where
`pip install ./python` put the package: the installed package (not the
checkout's) loads its own liblowbit_c, reports the CMake project's
version, and computes: NF4 quantize / dequantize within the codebook's
half-gap bound of a float64 reference, and an SGD step equal to the float64
update within two float32 roundings. Exits non-zero on any failure."""

import os
import re
import sys

import numpy as np

import lowbit
from lowbit import _library

source = sys.argv[1]
where = os.path.dirname(os.path.abspath(lowbit.__file__))
assert where.startswith(os.path.abspath(sys.prefix) + os.sep), "imported %s, not the venv's package" % where
assert where != os.path.join(os.path.abspath(source), "python", "lowbit")
assert "LOWBIT_C_LIBRARY" not in os.environ
lowbit.quantize(np.zeros(64, np.float32), "int8", block_size=64)  # loads the library
path = _library.library_path()
assert path == os.path.join(where, "liblowbit_c.so"), path
with open(os.path.join(source, "CMakeLists.txt")) as f:
    version = re.search(r"project\(lowbit VERSION ([0-9.]+)", f.read()).group(1)
assert lowbit.__version__ == version, (lowbit.__version__, version)

rng = np.random.default_rng(0)
x = rng.standard_normal(4096).astype(np.float32)
q = lowbit.quantize(x, "nf4", block_size=64)
back = lowbit.dequantize(q).astype(np.float64)
scale = np.repeat(np.abs(x.reshape(-1, 64)).max(axis=1).astype(np.float64), 64)
# NF4's largest gap between neighbouring codes is -0.6961928 - (-1) (docs/FORMATS.md): nearest
# rounding errs by at most half of it, plus float32 rounding of the product
assert np.all(np.abs(back - x) <= scale * (0.5 * (1 - 0.6961928009986877) + 2 ** -22)), "nf4 error"

w = rng.standard_normal(1000).astype(np.float32)
g = rng.standard_normal(1000).astype(np.float32)
ref = w.astype(np.float64) - np.float64(np.float32(0.1)) * g
with lowbit.Optimizer("sgd", "fp32", "fp32", lr=0.1, momentum=0.0) as opt:
    opt.add_param(w)
    opt.step([g])
# float32: the product lr * g and the difference, each rounded once
assert np.all(np.abs(w - ref) <= 2 ** -23 * (np.abs(ref) + np.abs(0.1 * g))), "sgd step"
print("installed lowbit %s from %s: ok" % (lowbit.__version__, path))
