"""Framework helpers: allocate numpy arrays, torch tensors or cupy arrays alike.

lowbit returns buffers of the caller's framework, on the input's device:
torch tensors when the input was a torch tensor, cupy arrays for cupy
input, numpy arrays otherwise. The frameworks are imported only here, and
only when needed.
"""

from ._errors import InvalidArgument

__all__ = ["framework_of", "empty", "zeros", "dtype_name", "dtype_of", "shape_of", "numel_of", "reshape"]

_ALIASES = {
    "float32": "float32",
    "float": "float32",
    "f32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "half": "float16",
    "f16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "uint8": "uint8",
    "int8": "int8",
    "int32": "int32",
    "int64": "int64",
    "float64": "float64",
    "double": "float64",
}


def _module(obj):
    return type(obj).__module__.split(".")[0]


def is_torch(obj):
    return _module(obj) == "torch"


def framework_of(obj):
    """"torch" for torch tensors, "cupy" for cupy arrays, else "numpy"."""
    mod = _module(obj)
    return mod if mod in ("torch", "cupy") else "numpy"


def dtype_name(dtype):
    """A canonical dtype name ("float32", "float16", "bfloat16", ...) for a
    string, a numpy dtype / scalar type or a torch dtype."""
    if isinstance(dtype, str):
        key = dtype.lower()
        if key.startswith("torch."):
            key = key[6:]
    elif type(dtype).__module__.split(".")[0] == "torch":
        key = str(dtype)[6:]
    else:
        import numpy as np

        key = np.dtype(dtype).name
    if key not in _ALIASES:
        raise InvalidArgument("dtype: unknown dtype %r (expected float32, float16 or bfloat16)" % (dtype,))
    return _ALIASES[key]


def dtype_of(obj):
    """The dtype name of an array or tensor ("float32", "bfloat16", ...)."""
    if is_torch(obj):
        return str(obj.dtype)[6:]
    dt = obj.dtype
    return getattr(dt, "name", None) or str(dt)


def shape_of(obj):
    return tuple(int(s) for s in obj.shape)


def numel_of(obj):
    n = 1
    for s in shape_of(obj):
        n *= s
    return n


def _torch_dtype(torch, name):
    return getattr(torch, name)


def empty(framework, shape, dtype, like=None):
    """An uninitialized contiguous buffer of the framework, on the device of
    ``like`` (a tensor / array of that framework) or else the CPU."""
    dtype = dtype_name(dtype)
    shape = tuple(int(s) for s in shape)
    if framework == "torch":
        import torch

        device = like.device if like is not None and is_torch(like) else "cpu"
        return torch.empty(shape, dtype=_torch_dtype(torch, dtype), device=device)
    if framework == "cupy":
        import cupy

        if dtype == "bfloat16":
            raise InvalidArgument("dtype: cupy has no bfloat16; use float32 / float16, or torch tensors")
        if like is not None and _module(like) == "cupy":
            with like.device:
                return cupy.empty(shape, dtype=dtype)
        return cupy.empty(shape, dtype=dtype)
    import numpy as np

    if dtype == "bfloat16":
        raise InvalidArgument("dtype: numpy has no bfloat16; use float32 / float16, or torch tensors for bfloat16")
    return np.empty(shape, dtype=dtype)


def zeros(framework, shape, dtype, like=None):
    """A zero-filled contiguous buffer of the framework (see empty)."""
    out = empty(framework, shape, dtype, like)
    if framework == "torch":
        out.zero_()
    else:
        out[...] = 0
    return out


def reshape(obj, shape):
    """obj.reshape(shape) (a view for contiguous arrays / tensors)."""
    return obj.reshape(tuple(shape))


def is_contiguous(obj):
    """True for C-contiguous numpy arrays / torch tensors (others: assumed)."""
    if is_torch(obj):
        return bool(obj.is_contiguous())
    flags = getattr(obj, "flags", None)
    if flags is not None and hasattr(flags, "c_contiguous"):
        return bool(flags.c_contiguous)
    return True
