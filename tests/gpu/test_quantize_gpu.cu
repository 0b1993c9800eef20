// GPU quantize / dequantize against the CPU twin: for every format, scale
// kind, dtype, block size and awkward sizes (odd, not a multiple of 8 or of
// the block, misaligned pointers), the codes, scales, nested statistics and
// decoded values must be bit-identical to cpu::quantize / cpu::dequantize.
// Outputs are poisoned before each launch so unwritten bytes show.
#include <doctest/doctest.h>

#include <lowbit/cpu/quantize.hpp>
#include <lowbit/cuda/quantize.cuh>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "device_buffer.cuh"

using namespace lowbit;

namespace {

std::vector<float> random_input(size_t n, unsigned seed, bool non_negative) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> x(n);
  for (auto& v : x) v = non_negative ? std::fabs(d(g)) : d(g);
  if (n > 100) std::fill(x.begin() + 32, x.begin() + std::min<size_t>(n, 96), 0.0f);  // an all-zero block (bs 32)
  return x;
}

template <class T>
std::vector<T> to_type(const std::vector<float>& x) {
  std::vector<T> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = from_float<T>(x[i]);
  return out;
}

template <class T>
bool bits_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// elem_offset shifts the dense pointers by whole elements to exercise the
// unaligned (scalar) kernel path.
template <class T>
void compare_with_cpu(format f, int bs, bool nested, size_t n, int elem_offset, bool managed = false) {
  nested = nested && has_zero_code(f);  // ulinear4 has no nested form
  CAPTURE(std::string(format_name(f)));
  CAPTURE(bs);
  CAPTURE(nested);
  CAPTURE(n);
  CAPTURE(elem_offset);
  const std::vector<T> x = to_type<T>(random_input(n, unsigned(n * 7 + bs), is_unsigned_format(f)));
  const blockwise_layout l = make_layout(f, int64_t(n), bs, nested);

  quantized_tensor ref(l);
  cpu::quantize(make_flat_view(x.data(), int64_t(n)), ref.view());
  std::vector<T> ref_y(n);
  cpu::dequantize(ref.view(), make_flat_view(ref_y.data(), int64_t(n)));

  device_buffer<T> dx(n + size_t(elem_offset), managed), dy(n + size_t(elem_offset), managed);
  dx.upload(x, size_t(elem_offset));
  device_quantized dq(l, managed);
  const device dev = managed ? device::managed() : device::cuda();
  cuda::quantize(make_flat_view(dx.ptr + elem_offset, int64_t(n), dev), dq.view(managed));
  cuda::dequantize(dq.view(managed), make_flat_view(dy.ptr + elem_offset, int64_t(n), dev));
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());

  CHECK(dq.codes.download(ref.codes.size()) == ref.codes);
  if (nested) {
    CHECK(dq.absmax_codes.download(ref.absmax_codes.size()) == ref.absmax_codes);
    CHECK(bits_equal(dq.nested_absmax.download(ref.nested_absmax.size()), ref.nested_absmax));
    CHECK(bits_equal(dq.offset.download(1), std::vector<float>{ref.nested_offset}));
  } else {
    CHECK(bits_equal(dq.absmax.download(ref.absmax.size()), ref.absmax));
  }
  CHECK(bits_equal(dy.download(n, size_t(elem_offset)), ref_y));
}

}  // namespace

TEST_CASE("GPU quantize/dequantize are bit-identical to the CPU twin") {
  const size_t sizes[] = {1, 7, 8, 9, 63, 65, 1000, 4097, 100003};
  for (int f = 0; f < format_count; ++f)
    for (bool nested : {false, true})
      for (int bs : {32, 64, 256, 4096})
        for (size_t n : sizes) {
          compare_with_cpu<float>(format(f), bs, nested, n, 0);
          compare_with_cpu<bf16>(format(f), bs, nested, n, 0);
        }
}

TEST_CASE("fp16, misaligned pointers and a multi-chunk nested tensor") {
  for (int f = 0; f < format_count; ++f) {
    compare_with_cpu<fp16>(format(f), 64, true, 1 << 20, 0);
    compare_with_cpu<float>(format(f), 64, true, 300001, 1);
    compare_with_cpu<bf16>(format(f), 128, false, 300001, 3);
    compare_with_cpu<fp16>(format(f), 2048, true, (1 << 22) + 5, 0);
  }
}

TEST_CASE("managed memory views work like device memory") {
  compare_with_cpu<float>(format::nf4, 64, true, 100003, 0, true);
  compare_with_cpu<bf16>(format::int8, 256, false, 100003, 0, true);
}

TEST_CASE("non-finite input is reported on the GPU; unchecked mode yields NaN") {
  std::vector<float> x = random_input(5000, 3, false);
  x[4000] = NAN;
  const blockwise_layout l = make_layout(format::nf4, 5000, 64, false);
  device_buffer<float> dx(5000), dy(5000);
  dx.upload(x);
  device_quantized dq(l);
  try {
    cuda::quantize(make_flat_view(dx.ptr, 5000, device::cuda()), dq.view());
    FAIL("expected a non-finite error");
  } catch (const error& e) {
    CHECK(e.code() == errc::non_finite);
  }
  cuda::quantize(make_flat_view(dx.ptr, 5000, device::cuda()), dq.view(), nullptr, false);
  cuda::dequantize(dq.view(), make_flat_view(dy.ptr, 5000, device::cuda()));
  const std::vector<float> y = dy.download(5000);
  CHECK(std::isnan(y[4000 / 64 * 64]));
  CHECK(std::isfinite(y[0]));
}

TEST_CASE("host pointers are rejected by the CUDA path") {
  std::vector<float> x(100);
  const blockwise_layout l = make_layout(format::nf4, 100, 64, false);
  device_quantized dq(l);
  CHECK_THROWS_AS(cuda::quantize(make_flat_view(x.data(), 100), dq.view()), error);
}

TEST_CASE("[large] more than 2^31 elements on the GPU") {
  const int64_t n = (int64_t(1) << 31) + 130;
  size_t free_b = 0, total_b = 0;
  LOWBIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  REQUIRE_MESSAGE(free_b > size_t(8) << 30, "needs 8 GiB of free device memory");
  const blockwise_layout l = make_layout(format::int8, n, 256, true);
  device_buffer<bf16> dx{static_cast<size_t>(n)};
  LOWBIT_CUDA_CHECK(cudaMemset(dx.ptr, 0, size_t(n) * sizeof(bf16)));
  const std::vector<bf16> tail = {to_bf16(0.5f), to_bf16(-2.0f), to_bf16(1.0f)};
  dx.upload(tail, size_t(n - 3));
  device_quantized dq(l);
  cuda::quantize(make_flat_view(dx.ptr, n, device::cuda()), dq.view());
  cuda::dequantize(dq.view(), make_flat_view(dx.ptr, n, device::cuda()));  // in place over the input
  const std::vector<bf16> back = dx.download(3, size_t(n - 3));
  // the tail block's scale is double-quantized: allow the nested map error
  CHECK(to_float(back[1]) == doctest::Approx(-2.0).epsilon(0.02));
  CHECK(to_float(back[0]) == doctest::Approx(0.5).epsilon(0.03));
  const std::vector<uint8_t> codes = dq.codes.download(3, size_t(n - 3));
  CHECK(int8_t(codes[1]) == -127);
  CHECK(int8_t(codes[2]) == 64);  // 0.5 * 127 = 63.5 rounds to even
}
