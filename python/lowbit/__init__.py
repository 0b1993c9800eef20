"""lowbit: low-bit quantized tensors, dequant-GEMM and optimizers (Python).

A ctypes binding of liblowbit_c (capi/include/lowbit_c.h). Tensors cross
as DLPack: numpy arrays, torch tensors and other ``__dlpack__`` producers,
on the CPU (or on CUDA devices when the library was built with CUDA:
``has_cuda()``). Importing needs only the standard library; the C library is
loaded on first use (see ``lowbit._library`` for where it is looked up).
The torch.optim adapters (``LowbitOptimizer``, ``AdamW8bit``, ...) are
loaded, with torch, when first accessed.
"""

__version__ = "0.1.0"

from ._errors import (  # noqa: F401
    CudaFailure,
    InternalError,
    InvalidArgument,
    IOFailure,
    LibraryNotFound,
    LowbitError,
    MalformedFile,
    NonFinite,
    Unsupported,
)
from ._library import library_path  # noqa: F401
from .cuda import get_stream, has_cuda, set_stream  # noqa: F401
from .gemm import dequant_linear, dequant_linear_backward_input  # noqa: F401
from .optimizer import (  # noqa: F401
    RULE_DEFAULTS,
    MemoryReport,
    Optimizer,
    ParamInfo,
    StepReport,
    compositions,
)
from .quantized import FORMATS, QuantizedTensor, dequantize, quantize, quantized_sizes  # noqa: F401

_TORCH_NAMES = ("LowbitOptimizer", "AdamW8bit", "Adam8bit", "Lion8bit", "AdamW4bit", "Lion")

__all__ = [
    "__version__",
    "LowbitError", "InvalidArgument", "Unsupported", "NonFinite", "IOFailure", "MalformedFile",
    "CudaFailure", "InternalError", "LibraryNotFound",
    "library_path", "has_cuda", "set_stream", "get_stream",
    "FORMATS", "QuantizedTensor", "quantize", "dequantize", "quantized_sizes",
    "dequant_linear", "dequant_linear_backward_input",
    "Optimizer", "StepReport", "MemoryReport", "ParamInfo", "compositions", "RULE_DEFAULTS",
] + list(_TORCH_NAMES)


def __getattr__(name):
    # PEP 562: the torch adapters import torch, so load them on first access.
    if name in _TORCH_NAMES:
        from . import torch_optim

        return getattr(torch_optim, name)
    raise AttributeError("module 'lowbit' has no attribute %r" % name)
