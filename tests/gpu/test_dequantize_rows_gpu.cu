// cuda::dequantize_rows against its CPU twin cpu::dequantize_rows: for every
// format, float32 and nested scales, float32 / bfloat16 / float16 output,
// odd cols and block sizes that do not divide cols (rows starting mid-block
// and mid-byte), random indices with repeats, more rows than the grid has
// CTAs, a misaligned output pointer and managed memory, the output must be
// bit-identical. Outputs are poisoned before each launch. Out-of-range
// indices: NaN rows (other rows intact) without check, lowbit::error
// (invalid_argument, naming position and value) with check; host memory is
// refused.
#include <doctest/doctest.h>

#include <lowbit/cpu/dequantize_rows.hpp>
#include <lowbit/cpu/quantize.hpp>
#include <lowbit/cuda/dequantize_rows.cuh>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../cpu/row_gather_inputs.hpp"
#include "device_buffer.cuh"

using namespace lowbit;

namespace {

using row_gather_inputs::random_indices;
using row_gather_inputs::random_matrix;

void upload(device_quantized& dq, const quantized_tensor& q) {
  dq.codes.upload(q.codes);
  if (q.layout.nested) {
    dq.absmax_codes.upload(q.absmax_codes);
    dq.nested_absmax.upload(q.nested_absmax);
    dq.offset.upload(std::vector<float>{q.nested_offset});
  } else {
    dq.absmax.upload(q.absmax);
  }
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
void compare_with_cpu(const quantized_tensor& q, device_quantized& dq, int64_t rows, int64_t cols,
                      const std::vector<int32_t>& idx, int elem_offset = 0, bool managed = false) {
  CAPTURE(elem_offset);
  CAPTURE(managed);
  const int64_t count = int64_t(idx.size());
  std::vector<T> ref(static_cast<size_t>(count * cols));
  cpu::dequantize_rows(const_cast<quantized_tensor&>(q).view(), rows, cols, idx.data(), count,
                       make_view(ref.data(), {count, cols}));
  device_buffer<int32_t> didx(idx.size(), managed);
  didx.upload(idx);
  device_buffer<T> dout(size_t(count * cols) + size_t(elem_offset), managed);  // poisoned (0xA5)
  const device dev = managed ? device::managed() : device::cuda();
  cuda::dequantize_rows(dq.view(managed), rows, cols, didx.ptr, count,
                        make_view(dout.ptr + elem_offset, {count, cols}, dev));
  LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(same_bits(dout.download(size_t(count * cols), size_t(elem_offset)), ref));
}

}  // namespace

TEST_CASE("GPU dequantize_rows is bit-identical to the CPU twin") {
  struct shape {
    int64_t rows, cols;
    int bs;
  };
  const shape shapes[] = {{53, 77, 64}, {17, 1000, 256}, {41, 33, 32}, {9, 4099, 4096}, {70, 1, 32}, {301, 515, 128}};
  unsigned seed = 11;
  for (int fi = 0; fi < format_count; ++fi)
    for (bool nested : {false, true}) {
      const format f = format(fi);
      if (nested && !has_zero_code(f)) continue;  // ulinear4 has no nested form
      for (const shape& s : shapes) {
        CAPTURE(std::string(format_name(f)));
        CAPTURE(nested);
        CAPTURE(s.rows);
        CAPTURE(s.cols);
        CAPTURE(s.bs);
        const int64_t n = s.rows * s.cols;
        const std::vector<float> x = random_matrix(n, seed, is_unsigned_format(f));
        quantized_tensor q(make_layout(f, n, s.bs, nested));
        cpu::quantize(make_flat_view(x.data(), n), q.view());
        device_quantized dq(q.layout);
        upload(dq, q);
        // more rows than the grid's CTAs for the largest shape (grid-stride loop)
        const std::vector<int32_t> idx = random_indices(s.rows, s.rows == 301 ? 5000 : 2 * s.rows + 5, seed + 1);
        compare_with_cpu<float>(q, dq, s.rows, s.cols, idx);
        compare_with_cpu<bf16>(q, dq, s.rows, s.cols, idx);
        compare_with_cpu<fp16>(q, dq, s.rows, s.cols, idx);
        ++seed;
      }
    }
}

TEST_CASE("misaligned output and managed memory") {
  const int64_t rows = 64, cols = 333, n = rows * cols;
  for (format f : {format::nf4, format::int8}) {
    const std::vector<float> x = random_matrix(n, 5, false);
    quantized_tensor q(make_layout(f, n, 64, true));
    cpu::quantize(make_flat_view(x.data(), n), q.view());
    device_quantized dq(q.layout), mq(q.layout, true);
    upload(dq, q);
    upload(mq, q);
    const std::vector<int32_t> idx = random_indices(rows, 100, 6);
    compare_with_cpu<float>(q, dq, rows, cols, idx, 1);
    compare_with_cpu<bf16>(q, dq, rows, cols, idx, 3);
    compare_with_cpu<float>(q, mq, rows, cols, idx, 0, true);
  }
}

TEST_CASE("out-of-range indices: NaN rows, and an error with check") {
  const int64_t rows = 53, cols = 77, n = rows * cols;
  const std::vector<float> x = random_matrix(n, 9, false);
  quantized_tensor q(make_layout(format::nf4, n, 64, true));
  cpu::quantize(make_flat_view(x.data(), n), q.view());
  device_quantized dq(q.layout);
  upload(dq, q);
  const std::vector<int32_t> good = {5, 0, 52, 7, 52};
  std::vector<float> ref(good.size() * size_t(cols));
  cpu::dequantize_rows(q.view(), rows, cols, good.data(), int64_t(good.size()), make_view(ref.data(), {5, cols}));
  std::vector<int32_t> idx = good;
  idx[2] = 53;
  idx[4] = -1;
  device_buffer<int32_t> didx(idx.size());
  didx.upload(idx);
  for (bool check : {false, true}) {
    CAPTURE(check);
    device_buffer<float> dout(idx.size() * size_t(cols));
    const tensor_view ov = make_view(dout.ptr, {5, cols}, device::cuda());
    if (check) {
      try {
        cuda::dequantize_rows(dq.view(), rows, cols, didx.ptr, 5, ov);
        FAIL("expected an invalid_argument error");
      } catch (const error& e) {
        CHECK(e.code() == errc::invalid_argument);
        CHECK_MESSAGE(std::string(e.what()).find("cuda::dequantize_rows: rows_idx[2] = 53 is out of range [0, 53)") !=
                          std::string::npos,
                      e.what());
      }
    } else {
      cuda::dequantize_rows(dq.view(), rows, cols, didx.ptr, 5, ov, nullptr, false);
    }
    LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> out = dout.download(idx.size() * size_t(cols));
    for (int r : {0, 1, 3})
      CHECK(std::memcmp(out.data() + r * cols, ref.data() + r * cols, size_t(cols) * sizeof(float)) == 0);
    for (int r : {2, 4})
      for (int64_t j = 0; j < cols; ++j) REQUIRE(std::isnan(out[size_t(r * cols + j)]));
  }
}

TEST_CASE("host memory is refused by the CUDA path") {
  const int64_t rows = 8, cols = 64, n = rows * cols;
  quantized_tensor q(make_layout(format::int8, n, 64, false));
  device_quantized dq(q.layout);
  upload(dq, q);
  device_buffer<int32_t> didx(2);
  didx.upload({1, 2});
  device_buffer<float> dout(2 * size_t(cols));
  std::vector<float> hout(2 * size_t(cols));
  CHECK_THROWS_WITH_AS(
      cuda::dequantize_rows(dq.view(), rows, cols, didx.ptr, 2, make_view(hout.data(), {2, cols})),
      doctest::Contains("cuda::dequantize_rows: out is in host memory; the CUDA path needs device or managed memory"),
      error);
  CHECK_THROWS_WITH_AS(cuda::dequantize_rows(q.view(), rows, cols, didx.ptr, 2,
                                             make_view(dout.ptr, {2, cols}, device::cuda())),
                       doctest::Contains("cuda::dequantize_rows: w is in host memory"), error);
  // pageable host indices: refused unless the device can read pageable memory
  int dev = 0, pageable = 0;
  LOWBIT_CUDA_CHECK(cudaGetDevice(&dev));
  LOWBIT_CUDA_CHECK(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev));
  const std::vector<int32_t> hidx = {1, 2};
  if (pageable) {
    cuda::dequantize_rows(dq.view(), rows, cols, hidx.data(), 2, make_view(dout.ptr, {2, cols}, device::cuda()));
  } else {
    CHECK_THROWS_WITH_AS(cuda::dequantize_rows(dq.view(), rows, cols, hidx.data(), 2,
                                               make_view(dout.ptr, {2, cols}, device::cuda())),
                         doctest::Contains("rows_idx is pageable host memory"), error);
  }
  // wrong shape, same message as the CPU path
  CHECK_THROWS_WITH_AS(cuda::dequantize_rows(dq.view(), rows, cols, didx.ptr, 2,
                                             make_view(dout.ptr, {2, cols - 1}, device::cuda())),
                       doctest::Contains("out has shape [2, 63], expected [2, 64]"), error);
}
