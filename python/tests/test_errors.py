"""Errors: the exception type, a message naming the argument, and nothing
the caller owns modified by a failed call."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from lowbit_testing import lowbit, np


class ErrorTest(unittest.TestCase):
    def test_hierarchy(self):
        self.assertTrue(issubclass(lowbit.InvalidArgument, ValueError))
        self.assertTrue(issubclass(lowbit.Unsupported, NotImplementedError))
        self.assertTrue(issubclass(lowbit.NonFinite, ValueError))
        self.assertTrue(issubclass(lowbit.IOFailure, OSError))
        self.assertTrue(issubclass(lowbit.MalformedFile, ValueError))
        self.assertTrue(issubclass(lowbit.CudaFailure, RuntimeError))
        self.assertTrue(issubclass(lowbit.InternalError, RuntimeError))
        self.assertTrue(issubclass(lowbit.LibraryNotFound, ImportError))
        for cls in (lowbit.InvalidArgument, lowbit.Unsupported, lowbit.NonFinite, lowbit.IOFailure,
                    lowbit.MalformedFile, lowbit.CudaFailure, lowbit.InternalError, lowbit.LibraryNotFound):
            self.assertTrue(issubclass(cls, lowbit.LowbitError))

    def test_wrong_input_dtype(self):
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.quantize(np.arange(64, dtype=np.int32), "nf4")
        e = cm.exception
        self.assertEqual(e.status, "INVALID_ARGUMENT")
        self.assertIn("input", str(e))  # the C argument's name
        self.assertEqual(e.message, str(e))

    def test_wrong_output_dtype(self):
        q = lowbit.quantize(np.ones(64, np.float32), "nf4")
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.dequantize(q, out=np.zeros(64, np.float64))
        self.assertIn("output", str(cm.exception))

    def test_unknown_format(self):
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.quantize(np.ones(64, np.float32), "nf5")
        self.assertIn("nf5", str(cm.exception))
        with self.assertRaises(lowbit.InvalidArgument):
            lowbit.quantize(np.ones(64, np.float32), "nf4", block_size=48)  # not a power of two

    def test_non_contiguous_view(self):
        x = np.ones(256, np.float32)[::2]
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.quantize(x, "nf4")
        self.assertIn("contiguous", str(cm.exception))
        q = lowbit.quantize(np.ones(128, np.float32), "nf4")
        out = np.zeros(256, np.float32)
        with self.assertRaises(lowbit.InvalidArgument):
            lowbit.dequantize(q, out=out[::2])
        self.assertTrue(np.all(out == 0))  # untouched

    def test_read_only_and_non_dlpack(self):
        x = np.ones(64, np.float32)
        x.flags.writeable = False
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.quantize(x, "nf4")
        self.assertIn("read-only", str(cm.exception))
        self.assertIn("x", str(cm.exception))
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.quantize([1.0, 2.0], "nf4")
        self.assertIn("x:", str(cm.exception))
        self.assertIn("__dlpack__", str(cm.exception))

    def test_non_finite_input(self):
        x = np.ones(128, np.float32)
        x[70] = np.nan
        with self.assertRaises(lowbit.NonFinite) as cm:
            lowbit.quantize(x, "nf4")
        self.assertEqual(cm.exception.status, "NON_FINITE")

    def test_gradient_size_mismatch_leaves_weights(self):
        w0 = np.linspace(-1, 1, 128).astype(np.float32)
        w1 = np.linspace(-2, 2, 64).astype(np.float32)
        opt = lowbit.Optimizer("adamw", "fp32", "fp32", lr=0.1)
        opt.add_param(w0)
        opt.add_param(w1)
        before = (w0.tobytes(), w1.tobytes())
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            opt.step([np.ones(128, np.float32), np.ones(63, np.float32)])  # second one wrong
        self.assertIn("63", str(cm.exception))
        self.assertEqual((w0.tobytes(), w1.tobytes()), before)
        with self.assertRaises(lowbit.InvalidArgument):
            opt.step([np.ones(128, np.float32)])  # count mismatch
        with self.assertRaises(lowbit.InvalidArgument):
            opt.step([np.ones(128, np.int32), np.ones(64, np.float32)])  # dtype
        self.assertEqual((w0.tobytes(), w1.tobytes()), before)
        opt.begin_step()
        with self.assertRaises(lowbit.InvalidArgument):
            opt.step_param(1, np.ones(65, np.float32))
        with self.assertRaises(lowbit.InvalidArgument):
            opt.step_param(2, np.ones(64, np.float32))  # no such parameter
        opt.end_step()
        self.assertEqual((w0.tobytes(), w1.tobytes()), before)
        self.assertEqual((opt.param_info(0).steps, opt.param_info(1).steps), (0, 0))
        # the optimizer still works afterwards
        opt.step([np.ones(128, np.float32), np.ones(64, np.float32)])
        self.assertEqual(opt.param_info(1).steps, 1)

    def test_unknown_composition(self):
        known = lowbit.compositions()
        with self.assertRaises(lowbit.LowbitError) as cm:
            lowbit.Optimizer("sgd", "int8", "nf4")
        msg = str(cm.exception)
        self.assertFalse(any(c.startswith("sgd/int8/nf4") for c in known))
        self.assertIn("sgd/int8/nf4", msg)
        self.assertIn("adamw/fp32/fp32", msg)  # lists what exists
        with self.assertRaises(lowbit.LowbitError) as cm:
            lowbit.Optimizer("adamw", "fp32", "fp64")
        self.assertIn("fp64", str(cm.exception))
        with self.assertRaises(lowbit.InvalidArgument) as cm:
            lowbit.Optimizer("adamw", "fp32", "fp32", memory="disk")
        self.assertIn("disk", str(cm.exception))
        if not lowbit.has_cuda():
            with self.assertRaises(lowbit.Unsupported):
                lowbit.Optimizer("adamw", "fp32", "fp32", memory="device")

    def test_quantized_param_through_wrong_entry(self):
        opt = lowbit.Optimizer("lion", "int8", "int8")
        with self.assertRaises(lowbit.LowbitError):
            opt.add_param(np.ones(256, np.float32))  # dense weight for a quantized composition
        q = lowbit.quantize(np.ones(256, np.float32), "nf4")
        with self.assertRaises(lowbit.LowbitError):
            opt.add_param(q)  # nf4 weight for int8 weights
        self.assertEqual(len(opt), 0)


    def test_negative_extents(self):
        for shape in ((-2, -4), (3, -1), -5):
            with self.assertRaisesRegex(lowbit.InvalidArgument, r"shape: extents must be >= 0, got -"):
                lowbit.QuantizedTensor.empty("nf4", shape)
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"extents must be integers, got 2.5"):
            lowbit.QuantizedTensor.empty("nf4", (2.5, 4))
        codes = np.zeros(4, np.uint8)
        with self.assertRaisesRegex(lowbit.InvalidArgument, r"extents must be >= 0"):
            lowbit.QuantizedTensor("nf4", (-2, -4), 64, False, codes, absmax=np.ones(1, np.float32))
        self.assertEqual(lowbit.QuantizedTensor.empty("nf4", (0, 4)).numel, 0)

    def test_optimizer_cannot_be_copied(self):
        import copy
        import io
        import pickle

        w = np.ones(64, np.float32)
        opt = lowbit.Optimizer("adamw", "fp32", "fp32")
        opt.add_param(w)
        for how in (copy.copy, copy.deepcopy, lambda o: pickle.dump(o, io.BytesIO())):
            with self.assertRaisesRegex(TypeError, r"lowbit.Optimizer cannot be copied or pickled .*state_dict"):
                how(opt)
        opt.step([np.ones(64, np.float32)])  # the original is untouched
        self.assertEqual(opt.param_info(0).steps, 1)


class FileErrorTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lowbit-test-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_load_errors_change_nothing(self):
        w = np.ones(300, np.float32)
        opt = lowbit.Optimizer("adamw", "fp32", "fp32")
        opt.add_param(w, name="w")
        opt.step([np.ones(300, np.float32)])
        with self.assertRaises(lowbit.IOFailure):
            opt.load(os.path.join(self.tmp, "missing.safetensors"))
        garbage = os.path.join(self.tmp, "garbage.safetensors")
        with open(garbage, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
        with self.assertRaises(lowbit.MalformedFile):
            opt.load(garbage)
        # states of another parameter set are refused
        other = lowbit.Optimizer("adamw", "fp32", "fp32")
        other.add_param(np.ones(301, np.float32), name="w")
        path = os.path.join(self.tmp, "other.safetensors")
        other.save(path)
        with self.assertRaises(lowbit.LowbitError):
            opt.load(path)
        self.assertEqual(opt.param_info(0).steps, 1)
        with self.assertRaises(lowbit.IOFailure):
            opt.save(os.path.join(self.tmp, "no", "such", "dir", "x.safetensors"))


class LibraryLoadingTest(unittest.TestCase):
    def test_missing_library_message(self):
        env = dict(os.environ, LOWBIT_C_LIBRARY=os.path.join(tempfile.gettempdir(), "no-such-liblowbit_c.so"))
        code = ("import lowbit\n"
                "try:\n"
                "    lowbit.quantized_sizes('nf4', 64)\n"
                "except ImportError as e:\n"
                "    print(type(e).__name__, e)\n")
        pkg = os.path.dirname(os.path.dirname(os.path.abspath(lowbit.__file__)))
        env["PYTHONPATH"] = pkg
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        self.assertIn("LibraryNotFound", out.stdout)
        self.assertIn("--target lowbit_c", out.stdout)
        self.assertIn("LOWBIT_C_LIBRARY", out.stdout)

    def test_import_needs_only_the_standard_library(self):
        code = "import sys, lowbit; print('numpy' in sys.modules, 'torch' in sys.modules)"
        pkg = os.path.dirname(os.path.dirname(os.path.abspath(lowbit.__file__)))
        env = dict(os.environ, PYTHONPATH=pkg)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout.strip(), "False False", out.stderr)


if __name__ == "__main__":
    unittest.main()
