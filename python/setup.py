"""Builds liblowbit_c for `pip install ./python` (see pyproject.toml).

The package is pure Python over a shared library; this script adds one
step to setuptools' build: configure the lowbit checkout this folder sits
in with CMake (tests, benchmarks, tools and examples off), build the
`lowbit_c` target and copy liblowbit_c.so into the built package, where
`lowbit._library` looks for it. The version is the CMake project's.

Environment:
  LOWBIT_CMAKE_ARGS  extra CMake arguments, e.g. "-DLOWBIT_ENABLE_CUDA=OFF"
                     (by default CUDA is used when CMake finds nvcc) or
                     "-DCMAKE_CXX_FLAGS=-march=native"
  LOWBIT_BUILD_JOBS  parallel build jobs (default: the CPU count)
"""

import os
import re
import shlex
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def checkout_version():
    path = os.path.join(ROOT, "CMakeLists.txt")
    try:
        with open(path) as f:
            match = re.search(r"project\(lowbit VERSION ([0-9.]+)", f.read())
    except OSError:
        match = None
    if not match:
        raise SystemExit("lowbit: build the Python package from a lowbit checkout (%s not found or without "
                         "`project(lowbit VERSION ...)`); python/ must stay inside the checkout" % path)
    return match.group(1)


class BuildWithLibrary(build_py):
    """build_py, then liblowbit_c built by CMake and copied into the package."""

    def run(self):
        super().run()
        build_dir = os.path.join(os.path.abspath(self.get_finalized_command("build").build_temp), "lowbit-cmake")
        configure = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                     "-DLOWBIT_BUILD_C_API=ON", "-DLOWBIT_BUILD_TESTS=OFF", "-DLOWBIT_BUILD_BENCH=OFF",
                     "-DLOWBIT_BUILD_TOOLS=OFF", "-DLOWBIT_BUILD_EXAMPLES=OFF"]
        configure += shlex.split(os.environ.get("LOWBIT_CMAKE_ARGS", ""))
        jobs = os.environ.get("LOWBIT_BUILD_JOBS", str(os.cpu_count() or 1))
        for command in (configure, ["cmake", "--build", build_dir, "--target", "lowbit_c", "-j", jobs]):
            print("lowbit:", " ".join(shlex.quote(c) for c in command), flush=True)
            try:
                subprocess.check_call(command)
            except FileNotFoundError:
                raise SystemExit("lowbit: cmake not found; install it (Debian: apt-get install cmake)") from None
        built = os.path.join(build_dir, "capi", "liblowbit_c.so")
        if not os.path.isfile(built):
            raise SystemExit("lowbit: the CMake build did not produce %s" % built)
        target = os.path.join(self.build_lib, "lowbit", "liblowbit_c.so")
        shutil.copyfile(built, target)
        print("lowbit: packaged", target, flush=True)


class BinaryDistribution(Distribution):
    """The wheel holds a shared library: tag it for this platform."""

    def has_ext_modules(self):
        return True


setup(version=checkout_version(), cmdclass={"build_py": BuildWithLibrary}, distclass=BinaryDistribution)
