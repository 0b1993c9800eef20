"""CUDA support of the loaded library: has_cuda() and the stream of GPU calls.

A liblowbit_c built with nvcc runs calls whose tensors live in CUDA device
or managed memory on the GPU, asynchronously on the calling thread's stream
(set_stream); other builds refuse such tensors with
:class:`~lowbit.Unsupported`. Streams are given as a raw ``cudaStream_t``
(an int), None (the legacy default stream), or a framework's stream object
(``torch.cuda.Stream``: ``.cuda_stream``; ``cupy.cuda.Stream``: ``.ptr``).
"""

import ctypes

from ._errors import InvalidArgument, check
from ._library import lib

__all__ = ["has_cuda", "set_stream", "get_stream", "stream_handle"]


def has_cuda():
    """True when the loaded liblowbit_c was built with CUDA."""
    return bool(lib().lowbit_c_has_cuda())


def stream_handle(stream):
    """A ``c_void_p`` cudaStream_t for None, an int, or a stream object."""
    if stream is None:
        return ctypes.c_void_p(None)
    if isinstance(stream, int):
        return ctypes.c_void_p(stream)
    for attr in ("cuda_stream", "ptr"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return ctypes.c_void_p(value)
    raise InvalidArgument("stream: expected None, an int cudaStream_t, or a stream object with .cuda_stream "
                          "or .ptr, got %s" % type(stream).__name__)


def set_stream(stream):
    """Make ``stream`` the CUDA stream of this thread's later GPU calls
    (quantize, dequantize, dequant-GEMM)."""
    check(lib().lowbit_c_set_stream(stream_handle(stream)))


def get_stream():
    """This thread's stream for GPU calls, as an int (0: the default)."""
    return lib().lowbit_c_get_stream() or 0
