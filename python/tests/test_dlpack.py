"""The DLPack bridge: a borrowed array stays alive during the call, the
producer's deleter runs afterwards (the capsule is not consumed), and the
DLTensor read through ctypes describes the array."""

import ctypes
import gc
import unittest
import weakref

from lowbit_testing import lowbit, np
from lowbit import _dlpack


_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
    ("PyCapsule_New", ctypes.pythonapi))
KDL_CPU, KDL_CUDA = 1, 2


class FakeProducer:
    """A minimal DLPack producer written here (float32, compact), standing
    in for a framework: a CUDA one, or a CPU one over a numpy buffer."""

    _name = b"dltensor"

    def __init__(self, device_type, data_ptr, shape):
        self.shape = tuple(shape)
        self._shape = (ctypes.c_int64 * len(shape))(*shape)
        self._managed = _dlpack.DLManagedTensor()
        t = self._managed.dl_tensor
        t.data = data_ptr
        t.device = _dlpack.DLDevice(device_type, 0)
        t.ndim = len(shape)
        t.dtype = _dlpack.DLDataType(2, 32, 1)  # kDLFloat, 32 bits
        t.shape = ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64))
        t.byte_offset = 0
        self.exports = 0

    def __dlpack__(self):
        self.exports += 1
        return _capsule_new(ctypes.addressof(self._managed), self._name, None)


class DLPackTest(unittest.TestCase):
    def test_foreign_cpu_producer(self):
        x = (np.arange(256, dtype=np.float32) - 100) / 7
        fake = FakeProducer(KDL_CPU, x.ctypes.data, (256,))
        q = lowbit.quantize(fake, "int8", block_size=64)
        self.assertEqual(fake.exports, 1)
        np.testing.assert_array_equal(q.codes, lowbit.quantize(x, "int8", block_size=64).codes)

    def test_cuda_tensor_refused_without_cuda(self):
        # a build without CUDA refuses a CUDA tensor, without touching its
        # (here bogus) data pointer; a CUDA build would run it, so the fake
        # tensor is not passed there
        if lowbit.has_cuda():
            self.skipTest("liblowbit_c built with CUDA: CUDA tensors are accepted")
        fake = FakeProducer(KDL_CUDA, 0x1000, (256,))
        with self.assertRaises(lowbit.Unsupported) as cm:
            lowbit.quantize(fake, "nf4")
        self.assertEqual(cm.exception.status, "UNSUPPORTED")

    def test_mixed_devices_refused(self):
        # host buffers with a CUDA tensor in one call: refused before any
        # memory is touched, in every build
        q = lowbit.quantize(np.ones(256, np.float32), "nf4")
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.dequantize(q, out=FakeProducer(KDL_CUDA, 0x1000, (256,)))
        self.assertIn("output", str(cm.exception))
        opt = lowbit.Optimizer("sgd", "fp32", "fp32")
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            opt.add_param(FakeProducer(KDL_CUDA, 0x1000, (256,)))
        self.assertIn("weight", str(cm.exception))
        self.assertEqual(len(opt), 0)

    def test_tensor_fields(self):
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        with _dlpack.borrow(x, "x") as p:
            t = p.contents
            self.assertEqual(t.data + t.byte_offset, x.ctypes.data)
            self.assertEqual(t.device.device_type, KDL_CPU)
            self.assertEqual(t.ndim, 2)
            self.assertEqual((t.dtype.code, t.dtype.bits, t.dtype.lanes), (2, 32, 1))  # kDLFloat
            self.assertEqual([t.shape[i] for i in range(2)], [3, 4])

    def test_deleter_runs_after_release(self):
        x = np.ones(1000, np.float32)
        ref = weakref.ref(x)
        b = _dlpack.borrow(x, "x")
        del x
        gc.collect()
        self.assertIsNotNone(ref())  # the holder keeps it alive
        b.release()
        del b
        gc.collect()
        self.assertIsNone(ref())  # the capsule's deleter released the array

    def test_calls_release_their_arguments(self):
        x = np.ones(4096, np.float32)
        ref = weakref.ref(x)
        q = lowbit.quantize(x, "nf4")
        out = lowbit.dequantize(q)
        del x
        gc.collect()
        self.assertIsNone(ref())
        self.assertTrue(np.all(out == 1))

if __name__ == "__main__":
    unittest.main()
