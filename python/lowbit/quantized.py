"""Blockwise-quantized tensors: QuantizedTensor, quantize() and dequantize().

A :class:`QuantizedTensor` holds the buffers of one quantized tensor
(docs/FORMATS.md): ``codes`` (uint8, two 4-bit codes per byte, element 2j
in the high nibble), ``absmax`` (float32 per block) or, with nested
(double-quantized) scales, ``absmax_codes`` (uint8 per block),
``nested_absmax`` (float32 per 256 blocks) and ``nested_offset`` (float32
[1]). Buffers are torch tensors when the input was a torch tensor (on its
device), cupy arrays for cupy input, numpy arrays otherwise, and may be
saved / shared like any array.
"""

import collections
import ctypes

from . import _arrays
from ._dlpack import borrow, null_tensor, require
from ._errors import InvalidArgument, check
from ._library import CQuantized, CQuantizedSizes, lib

__all__ = ["FORMATS", "QuantizedSizes", "QuantizedTensor", "quantized_sizes", "quantize", "dequantize"]

FORMATS = ("nf4", "fp4", "int4", "int8", "dynamic8", "udynamic8", "dynamic4", "ulinear4")

QuantizedSizes = collections.namedtuple("QuantizedSizes", "code_bytes n_blocks n_nested_blocks total_bytes")

_BUFFERS = ("codes", "absmax", "absmax_codes", "nested_absmax", "nested_offset")


def _encode_name(value, what):
    if not isinstance(value, str):
        raise InvalidArgument("%s: expected a string, got %s" % (what, type(value).__name__))
    return value.encode("utf-8")


def quantized_sizes(format, numel, block_size=64, nested=False):
    """Buffer sizes of a quantized tensor (lowbit_c_quantized_sizes):
    code_bytes, n_blocks, n_nested_blocks and total_bytes (codes + scales +
    nested scales, as C++'s layout counts them: without the 4-byte offset)."""
    s = CQuantizedSizes()
    check(
        lib().lowbit_c_quantized_sizes(
            _encode_name(format, "format"), int(numel), int(block_size), 1 if nested else 0, ctypes.byref(s)
        )
    )
    return QuantizedSizes(s.code_bytes, s.n_blocks, s.n_nested_blocks, s.total_bytes)


def _checked_shape(shape):
    """``shape`` as a tuple of ints, every extent >= 0."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise InvalidArgument("shape: expected a sequence of extents, got %r" % (shape,)) from None
    out = []
    for d in dims:
        try:
            if isinstance(d, bool) or int(d) != d:
                raise ValueError
            d = int(d)
        except (TypeError, ValueError):
            raise InvalidArgument("shape: extents must be integers, got %r in %r" % (d, dims)) from None
        if d < 0:
            raise InvalidArgument("shape: extents must be >= 0, got %d in %r" % (d, dims))
        out.append(d)
    return tuple(out)


class CQuantizedRef:
    """A lowbit_c_quantized struct over a QuantizedTensor's buffers, holding
    their DLPack capsules (and the buffers) while it lives. ``ptr`` is the
    ``POINTER(CQuantized)`` to pass to C. Use as a context manager around a
    call, or keep it as long as the C side keeps the pointer."""

    def __init__(self, q):
        self.q = q
        self._borrowed = {}
        fields = {}
        for name in _BUFFERS:
            buf = getattr(q, name)
            if buf is None:
                fields[name] = null_tensor()
            else:
                b = borrow(buf, "%s.%s" % (q._argname, name))
                self._borrowed[name] = b
                fields[name] = b.ptr
        self.struct = CQuantized(
            _encode_name(q.format, "format"), q.numel, q.block_size, 1 if q.nested else 0, **fields
        )
        self.ptr = ctypes.pointer(self.struct)

    def __enter__(self):
        return self.ptr

    def __exit__(self, *exc):
        self.release()
        return False

    def release(self):
        for b in self._borrowed.values():
            b.release()
        self._borrowed = {}
        self.ptr = None
        self.struct = None


class QuantizedTensor:
    """One blockwise-quantized tensor and its buffers.

    Attributes: ``format`` (name), ``shape`` (tuple), ``numel``,
    ``block_size``, ``nested`` (bool) and the buffers ``codes``, ``absmax``,
    ``absmax_codes``, ``nested_absmax``, ``nested_offset`` (None where the
    scale kind has no such buffer). The constructor wraps existing buffers
    (e.g. loaded from a checkpoint); :meth:`empty` allocates them.
    """

    _argname = "q"

    def __init__(self, format, shape, block_size, nested, codes, absmax=None, absmax_codes=None,
                 nested_absmax=None, nested_offset=None):
        self.format = str(format)
        self.shape = _checked_shape(shape)
        n = 1
        for s in self.shape:
            n *= s
        self.numel = n
        self.block_size = int(block_size)
        self.nested = bool(nested)
        self.codes = codes
        self.absmax = absmax
        self.absmax_codes = absmax_codes
        self.nested_absmax = nested_absmax
        self.nested_offset = nested_offset

    @classmethod
    def empty(cls, format, shape, block_size=64, nested=False, like=None):
        """Allocate (zero-filled) buffers for a tensor of ``shape``.

        ``like``: an array / tensor whose framework and device the buffers
        take (a torch tensor gives torch tensors on its device), or
        "numpy" / "torch" / "cupy" (on the CPU / current device); default
        numpy.
        """
        if isinstance(shape, int):
            shape = (shape,)
        shape = _checked_shape(shape)
        numel = 1
        for s in shape:
            numel *= s
        sizes = quantized_sizes(format, numel, block_size, nested)
        if like is None:
            fw, like_obj = "numpy", None
        elif isinstance(like, str):
            if like not in ("numpy", "torch", "cupy"):
                raise InvalidArgument("like: expected an array, a tensor, 'numpy', 'torch' or 'cupy', got %r"
                                      % like)
            fw, like_obj = like, None
        else:
            fw, like_obj = _arrays.framework_of(like), like
        z = lambda n, dt: _arrays.zeros(fw, (n,), dt, like_obj)  # noqa: E731
        if nested:
            return cls(format, shape, block_size, True, z(sizes.code_bytes, "uint8"),
                       absmax_codes=z(sizes.n_blocks, "uint8"),
                       nested_absmax=z(sizes.n_nested_blocks, "float32"),
                       nested_offset=z(1, "float32"))
        return cls(format, shape, block_size, False, z(sizes.code_bytes, "uint8"),
                   absmax=z(sizes.n_blocks, "float32"))

    @property
    def framework(self):
        """"torch", "cupy" or "numpy": the type of the buffers."""
        return _arrays.framework_of(self.codes)

    def buffers(self):
        """The present buffers by name (an ordered dict)."""
        return collections.OrderedDict(
            (name, getattr(self, name)) for name in _BUFFERS if getattr(self, name) is not None
        )

    @property
    def nbytes(self):
        """Bytes held by the buffers: codes + scales (+ nested absmax and
        the 4-byte nested offset when nested)."""
        total = 0
        for buf in self.buffers().values():
            total += _arrays.numel_of(buf) * (1 if _arrays.dtype_of(buf) == "uint8" else 4)
        return total

    @property
    def bits_per_param(self):
        """8 * nbytes / numel (0 for an empty tensor)."""
        return 8.0 * self.nbytes / self.numel if self.numel else 0.0

    def c_struct(self):
        """A :class:`CQuantizedRef`: the lowbit_c_quantized struct over the
        buffers, keeping their DLPack capsules alive while it lives."""
        return CQuantizedRef(self)

    def copy(self):
        """A deep copy (new buffers of the same framework)."""
        def dup(b):
            if b is None:
                return None
            return b.clone() if _arrays.is_torch(b) else b.copy()

        return QuantizedTensor(self.format, self.shape, self.block_size, self.nested,
                               *(dup(getattr(self, name)) for name in _BUFFERS))

    def dequantize(self, out=None, dtype=None):
        """Same as :func:`dequantize` (self, out, dtype)."""
        return dequantize(self, out=out, dtype=dtype)

    def __repr__(self):
        return "QuantizedTensor(format=%r, shape=%r, block_size=%d, nested=%r, %s, %d bytes)" % (
            self.format, self.shape, self.block_size, self.nested, self.framework, self.nbytes)


def quantize(x, format="nf4", block_size=64, nested=False, out=None):
    """Quantize ``x`` (float32 / bfloat16 / float16, contiguous; any
    ``__dlpack__`` object; CPU, or CUDA in CUDA builds) blockwise into a new :class:`QuantizedTensor`
    of x's shape, or into ``out`` (a QuantizedTensor of x's element count).
    Raises NonFinite for NaN / infinity in x."""
    require(x, "x")
    if out is None:
        shape = _arrays.shape_of(x) if hasattr(x, "shape") else None
        if shape is None:
            raise InvalidArgument("x: %s has no shape; pass an array or tensor" % type(x).__name__)
        out = QuantizedTensor.empty(format, shape, block_size, nested, like=x)
    elif not isinstance(out, QuantizedTensor):
        raise InvalidArgument("out: expected a QuantizedTensor, got %s" % type(out).__name__)
    with borrow(x, "x") as px, out.c_struct() as pq:
        check(lib().lowbit_c_quantize(px, pq))
    return out


def dequantize(q, out=None, dtype=None):
    """Decode ``q`` into ``out`` (float32 / bfloat16 / float16, contiguous,
    q.numel elements) or into a new array of q's framework and shape with
    ``dtype`` (default float32; bfloat16 needs torch)."""
    if not isinstance(q, QuantizedTensor):
        raise InvalidArgument("q: expected a QuantizedTensor, got %s" % type(q).__name__)
    if out is None:
        out = _arrays.empty(q.framework, q.shape, "float32" if dtype is None else dtype, q.codes)
    elif dtype is not None and _arrays.dtype_name(dtype) != _arrays.dtype_of(out):
        raise InvalidArgument("dtype: %s disagrees with out's dtype %s" % (_arrays.dtype_name(dtype),
                                                                          _arrays.dtype_of(out)))
    with q.c_struct() as pq, borrow(out, "out") as po:
        check(lib().lowbit_c_dequantize(pq, po))
    return out
