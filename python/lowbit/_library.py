"""Finding and loading liblowbit_c, and its C declarations (lowbit_c.h).

The library is looked up, on first use, at

1. the full path in the environment variable ``LOWBIT_C_LIBRARY``;
2. ``liblowbit_c.so`` next to this package's files;

and otherwise :class:`LibraryNotFound` (an ImportError) says how to build
it. Every function of the header gets its argtypes/restype here, and the
ctypes Structures below mirror the header's structs field for field.
The library must report ``lowbit_c_abi_version() == ABI_VERSION``.
"""

import ctypes
import os
import threading

from ._dlpack import DLTensor
from ._errors import LibraryNotFound

__all__ = [
    "ABI_VERSION",
    "lib",
    "library_path",
    "last_error",
    "CQuantized",
    "CQuantizedSizes",
    "CHparams",
    "COptimizerConfig",
    "CStepReport",
    "CMemoryReport",
    "CParamInfo",
]

ABI_VERSION = 3
ENV_VAR = "LOWBIT_C_LIBRARY"
_LIB_NAME = "liblowbit_c.so"

_p_tensor = ctypes.POINTER(DLTensor)


class CQuantized(ctypes.Structure):
    """lowbit_c_quantized"""

    _fields_ = [
        ("format", ctypes.c_char_p),
        ("numel", ctypes.c_int64),
        ("block_size", ctypes.c_int32),
        ("nested", ctypes.c_int32),
        ("codes", _p_tensor),
        ("absmax", _p_tensor),
        ("absmax_codes", _p_tensor),
        ("nested_absmax", _p_tensor),
        ("nested_offset", _p_tensor),
    ]


class CQuantizedSizes(ctypes.Structure):
    """lowbit_c_quantized_sizes_t"""

    _fields_ = [
        ("code_bytes", ctypes.c_int64),
        ("n_blocks", ctypes.c_int64),
        ("n_nested_blocks", ctypes.c_int64),
        ("total_bytes", ctypes.c_int64),
    ]


class CHparams(ctypes.Structure):
    """lowbit_c_hparams"""

    _fields_ = [
        ("lr", ctypes.c_float),
        ("beta1", ctypes.c_float),
        ("beta2", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("weight_decay", ctypes.c_float),
        ("momentum", ctypes.c_float),
    ]


class COptimizerConfig(ctypes.Structure):
    """lowbit_c_optimizer_config"""

    _fields_ = [
        ("rule", ctypes.c_char_p),
        ("states", ctypes.c_char_p),
        ("weights", ctypes.c_char_p),
        ("hparams", CHparams),
        ("seed", ctypes.c_uint64),
        ("max_grad_norm", ctypes.c_float),
        ("max_update", ctypes.c_float),
        ("stable_weight_scales", ctypes.c_int32),
        ("check_gradients", ctypes.c_int32),
        ("memory", ctypes.c_char_p),
    ]


class CStepReport(ctypes.Structure):
    """lowbit_c_step_report"""

    _fields_ = [
        ("step", ctypes.c_int64),
        ("grad_norm", ctypes.c_double),
        ("grad_scale", ctypes.c_float),
        ("skipped", ctypes.c_int32),
    ]


class CMemoryReport(ctypes.Structure):
    """lowbit_c_memory_report"""

    _fields_ = [
        ("params", ctypes.c_int64),
        ("weight_bytes", ctypes.c_int64),
        ("master_bytes", ctypes.c_int64),
        ("state_bytes", ctypes.c_int64),
    ]


class CParamInfo(ctypes.Structure):
    """lowbit_c_param_info"""

    _fields_ = [
        ("numel", ctypes.c_int64),
        ("group", ctypes.c_int32),
        ("steps", ctypes.c_int64),
        ("skipped", ctypes.c_int64),
    ]


_int = ctypes.c_int
_i32 = ctypes.c_int32
_i64 = ctypes.c_int64
_p_i32 = ctypes.POINTER(ctypes.c_int32)
_opt = ctypes.c_void_p  # lowbit_c_optimizer* (opaque)
_p_opt = ctypes.POINTER(ctypes.c_void_p)
_p_quant = ctypes.POINTER(CQuantized)
_p_hp = ctypes.POINTER(CHparams)

# name: (restype, argtypes), in the header's order
_PROTOTYPES = {
    "lowbit_c_abi_version": (_int, []),
    "lowbit_c_last_error": (ctypes.c_char_p, []),
    "lowbit_c_has_cuda": (_int, []),
    "lowbit_c_set_stream": (_int, [ctypes.c_void_p]),
    "lowbit_c_get_stream": (ctypes.c_void_p, []),
    "lowbit_c_quantized_sizes": (_int, [ctypes.c_char_p, _i64, _i32, _i32, ctypes.POINTER(CQuantizedSizes)]),
    "lowbit_c_quantize": (_int, [_p_tensor, _p_quant]),
    "lowbit_c_dequantize": (_int, [_p_quant, _p_tensor]),
    "lowbit_c_dequant_gemm_forward": (_int, [_p_tensor, _p_quant, _i64, _i64, _p_tensor, _p_tensor]),
    "lowbit_c_dequant_gemm_backward_input": (_int, [_p_tensor, _p_quant, _i64, _i64, _p_tensor]),
    "lowbit_c_optimizer_compositions": (ctypes.c_char_p, []),
    "lowbit_c_optimizer_create": (_int, [ctypes.POINTER(COptimizerConfig), _p_opt]),
    "lowbit_c_optimizer_destroy": (None, [_opt]),
    "lowbit_c_optimizer_composition": (ctypes.c_char_p, [_opt]),
    "lowbit_c_optimizer_set_stream": (_int, [_opt, ctypes.c_void_p]),
    "lowbit_c_optimizer_add_group": (_int, [_opt, _p_hp, _p_i32]),
    "lowbit_c_optimizer_set_hparams": (_int, [_opt, _i32, _p_hp]),
    "lowbit_c_optimizer_get_hparams": (_int, [_opt, _i32, _p_hp]),
    "lowbit_c_optimizer_add_param": (_int, [_opt, _p_tensor, _i32, ctypes.c_char_p, _p_i32]),
    "lowbit_c_optimizer_add_quantized_param": (_int, [_opt, _p_quant, _i32, ctypes.c_char_p, _p_i32]),
    "lowbit_c_optimizer_size": (_int, [_opt, _p_i32]),
    "lowbit_c_optimizer_param_info": (_int, [_opt, _i32, ctypes.POINTER(CParamInfo)]),
    "lowbit_c_optimizer_step": (_int, [_opt, ctypes.POINTER(_p_tensor), _i32, ctypes.POINTER(CStepReport)]),
    "lowbit_c_optimizer_begin_step": (_int, [_opt]),
    "lowbit_c_optimizer_step_param": (_int, [_opt, _i32, _p_tensor, ctypes.c_float, _p_i32]),
    "lowbit_c_optimizer_end_step": (_int, [_opt, ctypes.POINTER(CStepReport)]),
    "lowbit_c_optimizer_memory": (_int, [_opt, ctypes.POINTER(CMemoryReport)]),
    "lowbit_c_optimizer_save": (_int, [_opt, ctypes.c_char_p]),
    "lowbit_c_optimizer_load": (_int, [_opt, ctypes.c_char_p]),
    "lowbit_c_optimizer_save_to_memory": (_int, [_opt, ctypes.c_void_p, ctypes.c_uint64,
                                                 ctypes.POINTER(ctypes.c_uint64)]),
    "lowbit_c_optimizer_load_from_memory": (_int, [_opt, ctypes.c_void_p, ctypes.c_uint64]),
}

_lock = threading.Lock()
_lib = None
_path = None

_HOW_TO_BUILD = (
    "build it with `cmake -S <lowbit checkout> -B BUILD && cmake --build BUILD --target lowbit_c` "
    "and set %s to the full path of the built liblowbit_c.so (e.g. BUILD/capi/liblowbit_c.so), "
    "or copy it next to the lowbit package (%s)" % (ENV_VAR, os.path.dirname(os.path.abspath(__file__)))
)


def _candidates():
    env = os.environ.get(ENV_VAR)
    if env:
        return [(env, "$%s" % ENV_VAR)]
    here = os.path.dirname(os.path.abspath(__file__))
    return [(os.path.join(here, _LIB_NAME), "next to the package")]


def _load():
    tried = []
    for path, where in _candidates():
        if where.startswith("$") and not os.path.isfile(path):
            raise LibraryNotFound("liblowbit_c: %s=%s does not name a file; %s" % (ENV_VAR, path, _HOW_TO_BUILD))
        if not os.path.isfile(path):
            tried.append("%s (%s)" % (path, where))
            continue
        try:
            handle = ctypes.CDLL(path)
        except OSError as e:
            raise LibraryNotFound("liblowbit_c: cannot load %s: %s; %s" % (path, e, _HOW_TO_BUILD)) from e
        missing = []
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                fn = getattr(handle, name)
            except AttributeError:
                missing.append(name)
                continue
            fn.restype = restype
            fn.argtypes = argtypes
        if missing:
            raise LibraryNotFound(
                "liblowbit_c: %s lacks %s; it is not a matching liblowbit_c build (%s)"
                % (path, ", ".join(missing), _HOW_TO_BUILD)
            )
        abi = handle.lowbit_c_abi_version()
        if abi != ABI_VERSION:
            raise LibraryNotFound(
                "liblowbit_c: %s has ABI version %d, this package needs %d; rebuild the library from the "
                "same checkout as this package" % (path, abi, ABI_VERSION)
            )
        return handle, path
    raise LibraryNotFound("liblowbit_c not found (looked at: %s); %s" % ("; ".join(tried), _HOW_TO_BUILD))


def lib():
    """The loaded liblowbit_c (ctypes.CDLL), loading it on first use."""
    global _lib, _path
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib, _path = _load()
    return _lib


def library_path():
    """The file liblowbit_c was loaded from (loads it if needed)."""
    lib()
    return _path


def last_error():
    """lowbit_c_last_error() of this thread, as str."""
    msg = lib().lowbit_c_last_error()
    return msg.decode("utf-8", "replace") if msg else ""
