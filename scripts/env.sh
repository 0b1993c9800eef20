# Sourced by the scripts: puts the CUDA toolkit on PATH when it is installed
# in the standard place, and picks the parallelism for builds.
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null 2>&1; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
JOBS=${JOBS:-$(nproc)}
