// tests/io/test_dlpack.cpp
// The DLPack adapter: device and dtype mapping, shapes, strides (null means
// compact row-major), byte_offset, rank and alignment checks, and the errors
// for everything a lowbit view cannot represent.
#include <doctest/doctest.h>

#include <lowbit/io/dlpack.hpp>

#include <cstring>

#include "io_test_util.hpp"

using namespace lowbit;
using io_test::catch_error;
using io_test::contains;

namespace {

struct dl_fixture {
  alignas(64) float data[64] = {};
  int64_t shape[9] = {2, 3, 1, 1, 1, 1, 1, 1, 1};
  int64_t strides[9] = {1, 2, 1, 1, 1, 1, 1, 1, 1};
  DLTensor t{};
  dl_fixture() {
    t.data = data;
    t.device = DLDevice{kDLCPU, 0};
    t.ndim = 2;
    t.dtype = DLDataType{kDLFloat, 32, 1};
    t.shape = shape;
    t.strides = nullptr;
    t.byte_offset = 0;
  }
};

}  // namespace

TEST_CASE("dlpack: a compact CPU float tensor") {
  dl_fixture f;
  const tensor_view v = from_dlpack(f.t);
  CHECK(v.data == f.data);
  CHECK(v.type == dtype::f32);
  CHECK(v.ndim == 2);
  CHECK(v.shape[0] == 2);
  CHECK(v.shape[1] == 3);
  CHECK(v.strides[0] == 3);
  CHECK(v.strides[1] == 1);
  CHECK(v.is_contiguous());
  CHECK(v.dev.kind == device_kind::cpu);
  CHECK(v.numel() == 6);
  CHECK(from_dlpack_contiguous(f.t).numel() == 6);
}

TEST_CASE("dlpack: explicit strides and byte_offset") {
  dl_fixture f;
  f.t.strides = f.strides;  // a transposed 2x3 view of a 3x2 buffer
  f.t.byte_offset = 16;
  const tensor_view v = from_dlpack(f.t, "weight");
  CHECK(v.data == static_cast<void*>(f.data + 4));
  CHECK(v.strides[0] == 1);
  CHECK(v.strides[1] == 2);
  CHECK_FALSE(v.is_contiguous());
  const auto t = catch_error([&] { from_dlpack_contiguous(f.t, "weight"); });
  CHECK(t.code == errc::invalid_argument);
  CHECK(contains(t.message, "weight"));
  CHECK(contains(t.message, "contiguous"));

  // explicit strides equal to the compact ones are contiguous
  int64_t compact[2] = {3, 1};
  f.t.strides = compact;
  CHECK(from_dlpack(f.t).is_contiguous());
}

TEST_CASE("dlpack: device types") {
  dl_fixture f;
  f.t.device = DLDevice{kDLCUDAHost, 0};
  CHECK(from_dlpack(f.t).dev.kind == device_kind::cpu);
  f.t.device = DLDevice{kDLCUDA, 1};
  CHECK(from_dlpack(f.t).dev.kind == device_kind::cuda);
  CHECK(from_dlpack(f.t).dev.index == 1);
  f.t.device = DLDevice{kDLCUDAManaged, 0};
  CHECK(from_dlpack(f.t).dev.kind == device_kind::cuda_managed);
  for (DLDeviceType d : {kDLOpenCL, kDLVulkan, kDLMetal, kDLROCM, kDLROCMHost, kDLExtDev}) {
    f.t.device = DLDevice{d, 0};
    const auto t = catch_error([&] { from_dlpack(f.t, "grad"); });
    CHECK(t.code == errc::unsupported);
    CHECK(contains(t.message, dlpack_device_name(d)));
    CHECK(contains(t.message, "grad"));
  }
  // a device code from a newer DLPack (kDLOneAPI = 14) or garbage: written as
  // raw bits, since the 0.6 enum cannot hold them
  for (int code : {14, 99}) {
    std::memcpy(&f.t.device.device_type, &code, sizeof code);
    const auto t = catch_error([&] { from_dlpack(f.t); });
    CHECK(t.code == errc::unsupported);
    CHECK(contains(t.message, "(" + std::to_string(code) + ")"));
  }
}

TEST_CASE("dlpack: dtypes") {
  struct row {
    uint8_t code, bits;
    dtype want;
  };
  const row ok[] = {{kDLFloat, 32, dtype::f32}, {kDLFloat, 16, dtype::f16}, {kDLFloat, 64, dtype::f64},
                    {kDLBfloat, 16, dtype::bf16}, {kDLInt, 8, dtype::i8},   {kDLInt, 16, dtype::i16},
                    {kDLInt, 32, dtype::i32},     {kDLInt, 64, dtype::i64}, {kDLUInt, 8, dtype::u8},
                    {dlpack_bool_code, 8, dtype::boolean}};
  dl_fixture f;
  for (const row& r : ok) {
    f.t.dtype = DLDataType{r.code, r.bits, 1};
    CHECK(from_dlpack(f.t).type == r.want);
  }
  const DLDataType bad[] = {{kDLFloat, 8, 1},   {kDLBfloat, 32, 1},  {kDLUInt, 16, 1}, {kDLUInt, 32, 1},
                            {kDLComplex, 64, 1}, {kDLOpaqueHandle, 64, 1}, {kDLFloat, 32, 4}, {kDLInt, 4, 1}};
  for (const DLDataType& d : bad) {
    f.t.dtype = d;
    const auto t = catch_error([&] { from_dlpack(f.t, "x"); });
    CHECK(t.code == errc::unsupported);
    CHECK(contains(t.message, "x: "));
  }
  f.t.dtype = DLDataType{kDLFloat, 32, 4};
  CHECK(contains(catch_error([&] { from_dlpack(f.t); }).message, "lanes 4"));
}

TEST_CASE("dlpack: rank, shape, pointer and alignment errors") {
  dl_fixture f;
  f.t.ndim = 9;
  CHECK(catch_error([&] { from_dlpack(f.t); }).code == errc::invalid_argument);
  f.t.ndim = 8;
  CHECK(from_dlpack(f.t).ndim == 8);
  f.t.ndim = -1;
  CHECK(catch_error([&] { from_dlpack(f.t); }).code == errc::invalid_argument);

  dl_fixture s;
  s.shape[1] = -3;
  CHECK(contains(catch_error([&] { from_dlpack(s.t); }).message, "shape[1]"));
  dl_fixture o;
  o.shape[0] = int64_t(1) << 40;
  o.shape[1] = int64_t(1) << 40;
  CHECK(contains(catch_error([&] { from_dlpack(o.t); }).message, "overflows"));
  // Empty, but the compact strides of [0, 4, 2^62] (null strides) would
  // need 4 * 2^62: refused as well.
  dl_fixture e;
  e.t.ndim = 3;
  e.t.data = nullptr;
  e.shape[0] = 0;
  e.shape[1] = 4;
  e.shape[2] = int64_t(1) << 62;
  const auto empty_huge = catch_error([&] { from_dlpack(e.t); });
  CHECK(empty_huge.code == errc::invalid_argument);
  CHECK(contains(empty_huge.message, "[0, 4, 4611686018427387904] overflows"));
  e.shape[2] = int64_t(1) << 40;  // products that fit: an empty view with exact strides
  const tensor_view ev = from_dlpack(e.t);
  CHECK(ev.numel() == 0);
  CHECK(ev.strides[0] == int64_t(1) << 42);
  CHECK(ev.strides[1] == int64_t(1) << 40);
  CHECK(ev.is_contiguous());

  dl_fixture n;
  n.t.shape = nullptr;
  CHECK(catch_error([&] { from_dlpack(n.t); }).code == errc::invalid_argument);
  n.t.ndim = 0;  // a scalar needs no shape array
  CHECK(from_dlpack(n.t).numel() == 1);

  dl_fixture z;
  z.t.data = nullptr;
  CHECK(contains(catch_error([&] { from_dlpack(z.t); }).message, "null"));
  z.shape[0] = 0;  // empty tensors may have no data
  CHECK(from_dlpack(z.t).numel() == 0);

  dl_fixture m;
  m.t.byte_offset = 2;
  CHECK(contains(catch_error([&] { from_dlpack(m.t, "moment"); }).message, "aligned"));
  m.t.dtype = DLDataType{kDLBfloat, 16, 1};
  CHECK(from_dlpack(m.t).data == static_cast<void*>(reinterpret_cast<char*>(m.data) + 2));
}

TEST_CASE("dlpack: check_alignment") {
  dl_fixture f;
  tensor_view v = from_dlpack(f.t);
  check_alignment(v, 16, "state");
  check_alignment(v, 64, "state");
  v.data = reinterpret_cast<char*>(v.data) + 4;
  check_alignment(v, 4, "state");
  const auto t = catch_error([&] { check_alignment(v, 16, "state"); });
  CHECK(t.code == errc::invalid_argument);
  CHECK(contains(t.message, "state is not 16-byte aligned"));
  CHECK(catch_error([&] { check_alignment(v, 12, "state"); }).code == errc::invalid_argument);
  CHECK(catch_error([&] { check_alignment(v, 0, "state"); }).code == errc::invalid_argument);
}
