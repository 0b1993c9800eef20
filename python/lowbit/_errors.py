"""Exception types of the lowbit package and the status-code check.

Every C function of liblowbit_c returns a ``lowbit_c_status``; :func:`check`
turns a non-zero status into the matching exception, carrying the C
library's message (which names the argument that was wrong). Each class
also derives from the closest built-in exception, so ``except ValueError``
catches an invalid argument.
"""

__all__ = [
    "LowbitError",
    "InvalidArgument",
    "Unsupported",
    "NonFinite",
    "IOFailure",
    "MalformedFile",
    "CudaFailure",
    "InternalError",
    "LibraryNotFound",
    "check",
]


class LowbitError(Exception):
    """Base class of every error raised by lowbit.

    ``status`` is the name of the C status ("INVALID_ARGUMENT", ...) and
    ``message`` the library's message.
    """

    status = "ERROR"

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgument(LowbitError, ValueError):
    """A size, shape, dtype, name or pointer is wrong."""

    status = "INVALID_ARGUMENT"


class Unsupported(LowbitError, NotImplementedError):
    """Valid, but not served by this build (e.g. a CUDA tensor)."""

    status = "UNSUPPORTED"


class NonFinite(LowbitError, ValueError):
    """NaN or infinity where a finite value is required."""

    status = "NON_FINITE"


class IOFailure(LowbitError, OSError):
    """A file could not be opened, read or written."""

    status = "IO"


class MalformedFile(LowbitError, ValueError):
    """A file's contents violate its format."""

    status = "MALFORMED_FILE"


class CudaFailure(LowbitError, RuntimeError):
    """The CUDA runtime reported an error."""

    status = "CUDA"


class InternalError(LowbitError, RuntimeError):
    """Anything else (out of memory, a bug); the message says what."""

    status = "INTERNAL"


class LibraryNotFound(LowbitError, ImportError):
    """liblowbit_c could not be found or loaded (or has the wrong ABI)."""

    status = "LIBRARY_NOT_FOUND"


# lowbit_c_status value -> exception class (lowbit_c.h)
_BY_STATUS = {
    1: InvalidArgument,
    2: Unsupported,
    3: NonFinite,
    4: IOFailure,
    5: MalformedFile,
    6: CudaFailure,
    7: InternalError,
}


def error_for(status, message):
    """The exception object for a non-zero C status and its message."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        return InternalError("unknown lowbit_c status %d: %s" % (status, message))
    return cls(message)


def check(status):
    """Raise the exception matching a non-zero lowbit_c status, with the
    C library's last message for this thread; return None on LOWBIT_C_OK."""
    if status == 0:
        return None
    from ._library import last_error  # late import: _library imports this module

    raise error_for(status, last_error())
