"""Linear layers over quantized weights (dequant-GEMM, fp32 accumulation).

``dequant_linear(x, w)`` computes y = x W^T (+ bias) and
``dequant_linear_backward_input(dy, w)`` computes dx = dy W, with W a
:class:`~lowbit.quantized.QuantizedTensor` of shape (n, k) decoded on the
fly (lowbit_c_dequant_gemm_forward / _backward_input). Activations are
float32 / bfloat16 / float16 arrays or tensors (CPU, or CUDA in CUDA
builds, with W's buffers on the same device); leading dimensions beyond
the last are flattened (a 1-D x is one row).
"""

from . import _arrays
from ._dlpack import borrow, null_tensor, require
from ._errors import InvalidArgument, check
from ._library import lib
from .quantized import QuantizedTensor

__all__ = ["dequant_linear", "dequant_linear_backward_input"]


def _matrix_shape(w):
    if not isinstance(w, QuantizedTensor):
        raise InvalidArgument("w: expected a QuantizedTensor, got %s" % type(w).__name__)
    if len(w.shape) != 2:
        raise InvalidArgument("w: expected a 2-D (n, k) quantized weight, got shape %r" % (w.shape,))
    return w.shape


def _as_rows(a, width, argname, width_name):
    require(a, argname)
    shape = _arrays.shape_of(a)
    if len(shape) == 0 or shape[-1] != width:
        raise InvalidArgument("%s: last dimension must be %s = %d, got shape %r" % (argname, width_name, width, shape))
    lead = shape[:-1]
    if len(shape) != 2 and not _arrays.is_contiguous(a):
        raise InvalidArgument("%s: must be contiguous (got a strided view of shape %r)" % (argname, shape))
    rows = 1
    for s in lead:
        rows *= s
    a2 = a if len(shape) == 2 else _arrays.reshape(a, (rows, width))
    return a2, lead, rows


def _prepare_out(out, like, lead, rows, width, argname):
    if out is None:
        out = _arrays.empty(_arrays.framework_of(like), (rows, width), _arrays.dtype_of(like), like)
        return out, _arrays.reshape(out, tuple(lead) + (width,))
    want = tuple(lead) + (width,)
    if not _arrays.is_contiguous(out):
        raise InvalidArgument("%s: must be contiguous" % argname)
    if _arrays.shape_of(out) != want and _arrays.shape_of(out) != (rows, width):
        raise InvalidArgument("%s: expected shape %r, got %r" % (argname, want, _arrays.shape_of(out)))
    if len(_arrays.shape_of(out)) == 2:
        return out, out
    out2 = _arrays.reshape(out, (rows, width))
    return out2, out


def dequant_linear(x, w, bias=None, out=None):
    """y = x @ W^T (+ bias): x (..., k), W a quantized (n, k) weight, bias
    float32 (n,) or None; returns y (..., n) of x's dtype and framework, or
    writes ``out`` (contiguous, (..., n) or (M, n)) and returns it."""
    n, k = _matrix_shape(w)
    x2, lead, rows = _as_rows(x, k, "x", "k")
    y2, y = _prepare_out(out, x, lead, rows, n, "out")
    with borrow(x2, "x") as px, w.c_struct() as pw, borrow(y2, "out") as py:
        if bias is None:
            check(lib().lowbit_c_dequant_gemm_forward(px, pw, n, k, null_tensor(), py))
        else:
            with borrow(bias, "bias") as pb:
                check(lib().lowbit_c_dequant_gemm_forward(px, pw, n, k, pb, py))
    return y


def dequant_linear_backward_input(dy, w, out=None):
    """dx = dy @ W: dy (..., n), W a quantized (n, k) weight; returns dx
    (..., k) of dy's dtype and framework, or writes ``out``."""
    n, k = _matrix_shape(w)
    dy2, lead, rows = _as_rows(dy, n, "dy", "n")
    dx2, dx = _prepare_out(out, dy, lead, rows, k, "out")
    with borrow(dy2, "dy") as pdy, w.c_struct() as pw, borrow(dx2, "out") as pdx:
        check(lib().lowbit_c_dequant_gemm_backward_input(pdy, pw, n, k, pdx))
    return dx
