#!/usr/bin/env bash
# `pip install ./python` as a user would run it, offline: a venv that sees
# the system's numpy and setuptools, pip building liblowbit_c with CMake
# (python/setup.py; CUDA off to keep it short), then installed_smoke.py run
# from outside the checkout against the installed package.
# Usage: check_pip_install.sh SOURCE_DIR WORK_DIR [PYTHON]
set -euo pipefail
src=$1 work=$2 python=${3:-python3}
rm -rf "$work"
mkdir -p "$work"
"$python" -m venv --system-site-packages "$work/venv"
LOWBIT_CMAKE_ARGS="-DLOWBIT_ENABLE_CUDA=OFF" LOWBIT_BUILD_JOBS=${LOWBIT_BUILD_JOBS:-2} \
  "$work/venv/bin/pip" install --no-build-isolation --no-index --no-deps --quiet "$src/python"
cd "$work"
env -u LOWBIT_C_LIBRARY -u PYTHONPATH "$work/venv/bin/python" "$src/python/tests/installed_smoke.py" "$src"
