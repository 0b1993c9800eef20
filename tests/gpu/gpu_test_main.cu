// doctest main for GPU test binaries: exits 77 (CTest's SKIP_RETURN_CODE for
// these tests) with a message when no CUDA device is usable, so a machine
// without a GPU reports the tests as skipped, never as passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <lowbit/cuda/check.cuh>

#include <cstdio>

int main(int argc, char** argv) {
  if (lowbit::cuda::device_count() == 0) {
    std::fprintf(stderr, "SKIPPED: no CUDA device available; GPU tests were not run\n");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
