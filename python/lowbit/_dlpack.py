"""DLPack bridge: lend any ``__dlpack__`` object to one C call as a DLTensor*.

The DLPack 0.6 structs are mirrored with ctypes. :func:`borrow` calls
``obj.__dlpack__()`` (no arguments: the legacy capsule named "dltensor",
holding a DLManagedTensor* whose first member is the DLTensor), reads the
pointer with PyCapsule_GetPointer, and returns a :class:`Borrowed` holder
that keeps both the capsule and the object alive. The capsule is neither
renamed nor consumed, so the producer's deleter still runs when the holder
(and with it the capsule) is collected. Use the holder as a context
manager around the C call, or keep it as long as the C side keeps the
pointer (registered optimizer weights).
"""

import ctypes

from ._errors import InvalidArgument

__all__ = ["DLDevice", "DLDataType", "DLTensor", "DLManagedTensor", "Borrowed", "borrow", "require", "null_tensor"]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))),
]

# Our own prototypes over the interpreter's C API (not the shared attributes
# of ctypes.pythonapi, whose argtypes other code may set differently).
# PYFUNCTYPE holds the GIL and turns a set Python error into an exception.
_capsule_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi)
)
_capsule_get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))

_LEGACY_NAME = b"dltensor"


def null_tensor():
    """A NULL ``const DLTensor*`` (an absent optional argument)."""
    return ctypes.POINTER(DLTensor)()


class Borrowed:
    """A DLTensor* lent by a ``__dlpack__`` producer, valid while this lives.

    ``ptr`` is the ``POINTER(DLTensor)`` to pass to C; ``obj`` the object it
    views; ``capsule`` the producer's capsule (whose deleter frees the
    DLManagedTensor when the capsule is collected).
    """

    __slots__ = ("obj", "capsule", "ptr", "name")

    def __init__(self, obj, capsule, ptr, name):
        self.obj = obj
        self.capsule = capsule
        self.ptr = ptr
        self.name = name

    @property
    def tensor(self):
        """The DLTensor struct itself (read-only use)."""
        return self.ptr.contents

    def __enter__(self):
        return self.ptr

    def __exit__(self, *exc):
        self.release()
        return False

    def release(self):
        """Drop the capsule and the object (the pointer becomes invalid)."""
        self.ptr = None
        self.capsule = None
        self.obj = None


def _is_torch_tensor(obj):
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "detach")


def require(obj, name):
    """Raise InvalidArgument unless ``obj`` is a DLPack producer."""
    if obj is None:
        raise InvalidArgument("%s: expected a tensor or array (an object with __dlpack__), got None" % name)
    if not hasattr(obj, "__dlpack__"):
        raise InvalidArgument(
            "%s: %s has no __dlpack__ method; pass a numpy array (numpy >= 1.22), a torch tensor, "
            "or another DLPack producer" % (name, type(obj).__name__)
        )


def borrow(obj, name):
    """Lend ``obj`` (anything with ``__dlpack__``) as a DLTensor*.

    ``name`` is the argument's name, used in error messages. Torch tensors
    that require grad are detached first (same storage). Raises
    InvalidArgument for objects without ``__dlpack__`` and for exports the
    producer refuses (e.g. read-only numpy arrays).
    """
    require(obj, name)
    if _is_torch_tensor(obj) and getattr(obj, "requires_grad", False):
        obj = obj.detach()
    try:
        capsule = obj.__dlpack__()
    except BufferError as e:
        text = str(e)
        if "readonly" in text.replace("-", "").replace(" ", "").lower():
            raise InvalidArgument(
                "%s: the array is read-only and numpy refuses to export read-only arrays through DLPack "
                "(%s); pass a writable array, e.g. a copy (np.array(x) or x.copy())" % (name, text)
            ) from e
        raise InvalidArgument("%s: the producer refused the DLPack export: %s" % (name, text)) from e
    except (TypeError, RuntimeError, ValueError) as e:
        raise InvalidArgument("%s: the producer refused the DLPack export: %s" % (name, e)) from e
    if not _capsule_is_valid(capsule, _LEGACY_NAME):
        try:
            got = _capsule_get_name(capsule)
        except Exception:  # not a capsule at all
            got = None
        raise InvalidArgument(
            "%s: __dlpack__() returned %r, not a capsule named 'dltensor' (DLPack 0.6 legacy ABI)"
            % (name, got.decode() if got else type(capsule).__name__)
        )
    address = _capsule_get_pointer(capsule, _LEGACY_NAME)
    if not address:
        raise InvalidArgument("%s: the DLPack capsule holds a NULL pointer" % name)
    # DLManagedTensor's first member is the DLTensor: same address.
    ptr = ctypes.cast(ctypes.c_void_p(address), ctypes.POINTER(DLTensor))
    return Borrowed(obj, capsule, ptr, name)
