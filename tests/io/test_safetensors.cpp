// tests/io/test_safetensors.cpp
// The safetensors reader and writer: a byte-level round trip for every dtype
// (file and memory), the exact header layout (little-endian length, JSON,
// space padding to 8 bytes), each malformed case of FORMATS.md crafted byte
// by byte and rejected with errc::malformed_file, unsupported dtypes, and the
// atomic write (failed writes leave the old file and no temporary behind).
#include <doctest/doctest.h>

#include <lowbit/io/safetensors.hpp>

#include <algorithm>
#include <cstring>
#include <random>

#include "io_test_util.hpp"

using namespace lowbit;
using io_test::catch_error;
using io_test::contains;
using io_test::raw_file;

namespace {

std::vector<uint8_t> random_bytes(std::size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> b(n);
  for (auto& x : b) x = uint8_t(rng());
  return b;
}

// Parsing `bytes` must throw lowbit::error with `code`; returns the message.
std::string expect_rejected(const std::vector<uint8_t>& bytes, errc code = errc::malformed_file) {
  const io_test::thrown t = catch_error([&] { safetensors_reader::parse(bytes.data(), bytes.size(), "crafted"); });
  CHECK(t.threw);
  CHECK(t.lowbit);
  CHECK(t.code == code);
  CHECK(contains(t.message, "crafted"));
  return t.message;
}

const dtype all_dtypes[] = {dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::i64,
                            dtype::i32, dtype::i16, dtype::i8,  dtype::u8,   dtype::boolean};

}  // namespace

TEST_CASE("safetensors: dtype strings map both ways") {
  for (dtype t : all_dtypes) CHECK(parse_safetensors_dtype(safetensors_dtype_string(t), "x") == t);
  CHECK(std::string(safetensors_dtype_string(dtype::bf16)) == "BF16");
  CHECK(std::string(safetensors_dtype_string(dtype::boolean)) == "BOOL");
  const auto u = catch_error([] { parse_safetensors_dtype("U32", "tensor 'w'"); });
  CHECK(u.code == errc::unsupported);
  CHECK(contains(u.message, "unsupported dtype 'U32'"));
  CHECK(contains(u.message, "tensor 'w'"));
  CHECK(catch_error([] { parse_safetensors_dtype("F8_E4M3", "x"); }).code == errc::unsupported);
  CHECK(catch_error([] { parse_safetensors_dtype("f32", "x"); }).code == errc::malformed_file);
}

TEST_CASE("safetensors: round trip of every dtype through a file and through memory") {
  io_test::scratch_dir dir;
  const std::vector<std::vector<int64_t>> shapes = {{3, 5}, {7}, {}, {0, 4}, {2, 1, 3}};
  std::vector<std::vector<uint8_t>> data;
  std::vector<std::string> names;
  safetensors_writer w;
  int k = 0;
  for (dtype t : all_dtypes) {
    for (const auto& shape : shapes) {
      int64_t n = 1;
      for (int64_t s : shape) n *= s;
      data.push_back(random_bytes(std::size_t(n) * dtype_size(t), uint64_t(++k)));
      if (t == dtype::boolean)
        for (auto& b : data.back()) b &= 1;
      names.push_back(std::string("t.") + safetensors_dtype_string(t) + "." + std::to_string(shape.size()) + "." +
                      std::to_string(k));
      w.add(names.back(), t, shape, data.back().data());
    }
  }
  w.set_metadata("format", "pt");
  w.set_metadata("note", "caf\xc3\xa9");
  const std::string path = dir.file("all.safetensors");
  w.write(path);
  const std::vector<uint8_t> image = w.to_bytes();
  CHECK(io_test::read_file(path) == image);
  CHECK(w.file_size() == image.size());

  const safetensors_reader from_file = safetensors_reader::open(path);
  const safetensors_reader from_mem = safetensors_reader::parse(image.data(), image.size());
  for (const safetensors_reader* r : {&from_file, &from_mem}) {
    REQUIRE(r->tensors().size() == names.size());
    CHECK(r->metadata().at("format") == "pt");
    CHECK(r->metadata().at("note") == "caf\xc3\xa9");
    k = 0;
    for (dtype t : all_dtypes) {
      for (const auto& shape : shapes) {
        const safetensors_tensor& e = r->at(names[size_t(k)]);
        CHECK(e.type == t);
        CHECK(e.dtype_string == safetensors_dtype_string(t));
        CHECK(e.shape == shape);
        REQUIRE(e.nbytes == data[size_t(k)].size());
        CHECK((e.nbytes == 0 || std::memcmp(e.data, data[size_t(k)].data(), e.nbytes) == 0));
        ++k;
      }
    }
    // insertion order is file order
    for (std::size_t i = 0; i < names.size(); ++i) CHECK(r->tensors()[i].name == names[i]);
  }
}

TEST_CASE("safetensors: header layout is LE length, JSON, spaces to an 8-byte boundary") {
  const float v[3] = {1.0f, -2.0f, 0.5f};
  const uint8_t b[1] = {7};
  safetensors_writer w;
  w.add("b", dtype::u8, {1}, b);
  w.add("a", dtype::f32, {3}, v);
  const std::vector<uint8_t> f = w.to_bytes();
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f[size_t(i)];
  CHECK((8 + n) % 8 == 0);
  const std::string h(f.begin() + 8, f.begin() + 8 + long(n));
  CHECK(h.rfind("{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[1,13]}}",
                0) == 0);
  CHECK(h.find_first_not_of(' ', h.find_last_of('}') + 1) == std::string::npos);
  CHECK(f.size() == 8 + n + 13);
  CHECK(f[8 + n] == 7);
  float back[3];
  std::memcpy(back, &f[8 + n + 1], 12);
  CHECK(back[1] == -2.0f);

  const safetensors_reader r = safetensors_reader::parse(f.data(), f.size());
  CHECK(r.header_size() == n);
  CHECK(r.data_offset() == 8 + n);
  CHECK_FALSE(r.at("a").is_aligned());  // follows a 1-byte tensor
  CHECK(r.at("a").to_vector<float>() == std::vector<float>{1.0f, -2.0f, 0.5f});
  CHECK(catch_error([&] { r.at("a").view(); }).code == errc::invalid_argument);
  CHECK(catch_error([&] { r.at("a").to_vector<uint8_t>(); }).code == errc::invalid_argument);
  CHECK(catch_error([&] { r.at("zzz"); }).code == errc::invalid_argument);
  CHECK(r.find("zzz") == nullptr);
  const tensor_view bv = r.at("b").view();
  CHECK(bv.type == dtype::u8);
  CHECK(bv.ndim == 1);
  CHECK(static_cast<const uint8_t*>(bv.data)[0] == 7);
}

TEST_CASE("safetensors: hand-written valid files, offsets in any key order") {
  // "a" comes second in the data although it sorts first by name.
  const std::vector<uint8_t> data = {1, 2, 3, 4, 5, 6};
  const auto f = raw_file(
      R"({"a":{"dtype":"I16","shape":[2],"data_offsets":[2,6]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
      R"("__metadata__":{"k":"v"}}   )",
      data);
  const safetensors_reader r = safetensors_reader::parse(f.data(), f.size());
  REQUIRE(r.tensors().size() == 2);
  CHECK(r.tensors()[0].name == "b");
  CHECK(r.tensors()[1].name == "a");
  CHECK(r.at("a").data[0] == 3);
  CHECK(r.metadata().at("k") == "v");

  const auto empty = raw_file("{}");
  CHECK(safetensors_reader::parse(empty.data(), empty.size()).tensors().empty());
  // unknown extra fields in an entry are ignored, as by the reference reader
  const auto extra = raw_file(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":true}})", {9});
  CHECK(safetensors_reader::parse(extra.data(), extra.size()).at("x").data[0] == 9);
  // zero-sized tensors may share an offset
  const auto zeros =
      raw_file(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"y":{"dtype":"U8","shape":[0,3],"data_offsets":[0,0]}})");
  CHECK(safetensors_reader::parse(zeros.data(), zeros.size()).tensors().size() == 2);
}

TEST_CASE("safetensors: malformed files are rejected with errc::malformed_file") {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<uint8_t> eight(8, 0);

  SUBCASE("shorter than the length field") {
    CHECK(contains(expect_rejected({}), "shorter than the 8-byte"));
    CHECK(contains(expect_rejected({1, 0, 0, 0, 0, 0, 0}), "shorter than the 8-byte"));
  }
  SUBCASE("header length past the end of the file") {
    CHECK(contains(expect_rejected(raw_file(1000, "{}")), "past the end"));
    CHECK(contains(expect_rejected(raw_file(3, "{}")), "past the end"));  // one byte short
  }
  SUBCASE("header length above the 100 MB cap") {
    CHECK(contains(expect_rejected(raw_file(100000001ull, "{}")), "limit"));
    CHECK(contains(expect_rejected(raw_file(~0ull, "{}")), "limit"));
  }
  SUBCASE("not JSON / not an object / trailing garbage") {
    expect_rejected(raw_file(""));
    expect_rejected(raw_file("{"));
    expect_rejected(raw_file("{\"t\":}"));
    CHECK(contains(expect_rejected(raw_file("[]")), "not a JSON object"));
    CHECK(contains(expect_rejected(raw_file("{} x")), "JSON"));
    expect_rejected(raw_file(std::string("{}\0\0", 4)));
  }
  SUBCASE("not UTF-8") {
    CHECK(contains(expect_rejected(raw_file("{\"t\xff\":{}}")), "UTF-8"));
    CHECK(contains(expect_rejected(raw_file("{\"\xc0\xaf\":1}")), "UTF-8"));      // overlong '/'
    CHECK(contains(expect_rejected(raw_file("{\"\xed\xa0\x80\":1}")), "UTF-8"));  // surrogate
    CHECK(contains(expect_rejected(raw_file("{\"\xe2\x82\":1}")), "UTF-8"));      // truncated sequence
  }
  SUBCASE("entries that are not objects or lack fields") {
    CHECK(contains(expect_rejected(raw_file(R"({"t":5})")), "tensor 't': entry is not a JSON object"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":[]})")), "tensor 't'"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", eight)), "dtype"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", eight)), "dtype"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", eight)), "shape"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", eight)),
                   "shape"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[2]}})", eight)), "data_offsets"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", eight)),
                   "data_offsets"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", eight)),
                   "data_offsets"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", eight)),
                   "data_offsets"));
  }
  SUBCASE("__metadata__ must map strings to strings") {
    CHECK(contains(expect_rejected(raw_file(R"({"__metadata__":[]})")), "__metadata__"));
    CHECK(contains(expect_rejected(raw_file(R"({"__metadata__":{"a":1}})")), "__metadata__ value of 'a'"));
  }
  SUBCASE("unknown dtype (and unsupported ones with their own code)") {
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", eight)),
                   "unknown dtype 'F17'"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"U32","shape":[2],"data_offsets":[0,8]}})", eight),
                                   errc::unsupported),
                   "unsupported dtype 'U32'"));
  }
  SUBCASE("negative, fractional and overflowing shapes") {
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight)),
                   "non-negative"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight)),
                   "non-negative"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[1e30],"data_offsets":[0,8]}})", eight)),
                   "non-negative"));
    CHECK(contains(expect_rejected(raw_file(
                       R"({"t":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", eight)),
                   "non-negative"));
    CHECK(contains(expect_rejected(raw_file(
                       R"({"t":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", eight)),
                   "overflows"));
    // element count fits int64 but bytes do not
    CHECK(contains(expect_rejected(raw_file(
                       R"({"t":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})", eight)),
                   "overflows"));
    // a zero extent ends the product early but later extents are still checked
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"U8","shape":[0,-1],"data_offsets":[0,0]}})")),
                   "non-negative"));
  }
  SUBCASE("size disagrees with dtype x shape") {
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", {1, 2, 3, 4})),
                   "needs 8"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", eight)),
                   "needs 4"));
  }
  SUBCASE("offsets out of range or reversed") {
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", {1, 2, 3})),
                   "outside the data section"));
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", eight)),
                   "end before they begin"));
    CHECK(contains(expect_rejected(raw_file(
                       R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}})",
                       eight)),
                   "data_offsets"));
  }
  SUBCASE("overlapping, gapped, not starting at zero, trailing bytes") {
    const std::vector<uint8_t> twelve(12, 0);
    CHECK(contains(expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                            twelve)),
                   "overlaps"));
    CHECK(contains(expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                            twelve)),
                   "gap"));
    CHECK(contains(expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight)), "gap"));
    CHECK(contains(expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight)),
                   "data section holds 8"));
    CHECK(contains(expect_rejected(raw_file("{}", {1})), "data section holds 1"));
    // the same bytes claimed twice
    CHECK(contains(expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                            eight)),
                   "overlaps"));
  }
  SUBCASE("a valid file still parses (control)") {
    const auto f = raw_file("{" + ok_entry + "}", eight);
    CHECK(safetensors_reader::parse(f.data(), f.size()).at("t").numel() == 2);
  }
}

TEST_CASE("safetensors: open() reports I/O problems with errc::io") {
  io_test::scratch_dir dir;
  const auto missing = catch_error([&] { safetensors_reader::open(dir.file("nope.safetensors")); });
  CHECK(missing.code == errc::io);
  CHECK(contains(missing.message, "nope.safetensors"));
  CHECK(catch_error([&] { safetensors_reader::open(dir.path.string()); }).code == errc::io);
  io_test::write_file(dir.file("tiny"), {1, 2, 3});
  const auto tiny = catch_error([&] { safetensors_reader::open(dir.file("tiny")); });
  CHECK(tiny.code == errc::malformed_file);
  CHECK(contains(tiny.message, "tiny"));
  io_test::write_file(dir.file("empty"), {});
  CHECK(catch_error([&] { safetensors_reader::open(dir.file("empty")); }).code == errc::malformed_file);
}

TEST_CASE("safetensors: tensor bytes stay valid while any copy of the reader lives") {
  io_test::scratch_dir dir;
  int32_t v[4] = {1, 2, 3, 4};
  safetensors_writer w;
  w.add("v", make_view(static_cast<void*>(v), dtype::i32, {2, 2}));
  w.write(dir.file("v.safetensors"));
  std::vector<safetensors_reader> keep;
  {
    const safetensors_reader inner = safetensors_reader::open(dir.file("v.safetensors"));
    keep.push_back(inner);
  }
  int32_t back[4];
  std::memcpy(back, keep[0].at("v").data, sizeof back);
  CHECK(back[3] == 4);
  CHECK(keep[0].at("v").shape == std::vector<int64_t>{2, 2});
}

TEST_CASE("safetensors writer: rejects bad tensors before anything is written") {
  const float x[2] = {1, 2};
  safetensors_writer w;
  w.add("x", dtype::f32, {2}, x);
  const auto dup = catch_error([&] { w.add("x", dtype::f32, {2}, x); });
  CHECK(dup.code == errc::invalid_argument);
  CHECK(contains(dup.message, "duplicate tensor name 'x'"));
  CHECK(catch_error([&] { w.add("__metadata__", dtype::f32, {2}, x); }).code == errc::invalid_argument);
  CHECK(catch_error([&] { w.add("bad\xff", dtype::f32, {2}, x); }).code == errc::invalid_argument);
  CHECK(catch_error([&] { w.add("neg", dtype::f32, {-2}, x); }).code == errc::invalid_argument);
  CHECK(catch_error([&] { w.add("null", dtype::f32, {2}, nullptr); }).code == errc::invalid_argument);
  CHECK(catch_error([&] { w.add_owned("short", dtype::f32, {2}, std::vector<uint8_t>(7)); }).code ==
        errc::invalid_argument);
  CHECK_FALSE(w.contains("short"));
  CHECK(catch_error([&] { w.add("huge", dtype::f64, {int64_t(1) << 62, 4}, x); }).code == errc::invalid_argument);
  CHECK(catch_error([&] { w.set_metadata("k", "\xc3"); }).code == errc::invalid_argument);
  CHECK(w.size() == 1);
  w.add("null_ok", dtype::f32, {0}, nullptr);  // empty tensors need no data
  CHECK(w.size() == 2);
}

TEST_CASE("safetensors writer: owned and generated tensors") {
  safetensors_writer w;
  w.add_owned("o", dtype::u8, {3}, {1, 2, 3});
  w.add_generated("g", dtype::i16, {2, 2}, [](uint8_t* dst, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = uint8_t(10 + i);
  });
  const auto f = w.to_bytes();
  const auto r = safetensors_reader::parse(f.data(), f.size());
  CHECK(r.at("o").data[2] == 3);
  CHECK(r.at("g").nbytes == 8);
  CHECK(r.at("g").data[7] == 17);
}

TEST_CASE("safetensors writer: write_to fills a caller's buffer, or refuses a short one untouched") {
  safetensors_writer w;
  const std::vector<uint8_t> payload = random_bytes(37, 5);
  w.add("a", dtype::u8, {37}, payload.data());
  w.add_owned("b", dtype::i64, {1}, std::vector<uint8_t>(8, 7));
  w.set_metadata("k", "v");
  const std::vector<uint8_t> image = w.to_bytes();
  REQUIRE(image.size() == w.file_size());
  std::vector<uint8_t> buffer(image.size() + 5, 0xee);
  CHECK(w.write_to(buffer.data(), buffer.size()) == image.size());
  CHECK(std::equal(image.begin(), image.end(), buffer.begin()));
  CHECK(buffer.back() == 0xee);  // nothing past the image
  std::vector<uint8_t> small(image.size() - 1, 0xee);
  const io_test::thrown t = catch_error([&] { w.write_to(small.data(), small.size()); });
  CHECK((t.threw && t.lowbit));
  CHECK(t.code == errc::invalid_argument);
  CHECK(contains(t.message, std::to_string(image.size())));
  CHECK(std::all_of(small.begin(), small.end(), [](uint8_t b) { return b == 0xee; }));
}

TEST_CASE("safetensors writer: writes are atomic") {
  io_test::scratch_dir dir;
  const std::string path = dir.file("model.safetensors");
  const float a[2] = {1, 2};
  safetensors_writer first;
  first.add("a", dtype::f32, {2}, a);
  first.write(path);
  const std::vector<uint8_t> old_bytes = io_test::read_file(path);
  REQUIRE(!old_bytes.empty());

  SUBCASE("a directory that does not exist: errc::io, nothing created") {
    const auto t = catch_error([&] { first.write(dir.file("no/such/dir/x.safetensors")); });
    CHECK(t.code == errc::io);
    CHECK(contains(t.message, "no/such/dir/x.safetensors"));
    CHECK(dir.entries() == 1);
  }
  SUBCASE("a duplicate name throws before rename; the old file survives") {
    safetensors_writer w;
    w.add("b", dtype::f32, {2}, a);
    CHECK(catch_error([&] { w.add("b", dtype::f32, {2}, a); }).code == errc::invalid_argument);
    CHECK(io_test::read_file(path) == old_bytes);
  }
  SUBCASE("a fill function that throws mid-write leaves the old file and no temporary") {
    const std::vector<uint8_t> big(1 << 20, 5);
    safetensors_writer w;
    w.add("big", dtype::u8, {int64_t(big.size())}, big.data());
    w.add_generated("boom", dtype::f32, {4}, [](uint8_t*, std::size_t) {
      throw error(errc::non_finite, "fill failed on purpose");
    });
    const auto t = catch_error([&] { w.write(path); });
    CHECK(t.code == errc::non_finite);
    CHECK(io_test::read_file(path) == old_bytes);
    CHECK(dir.entries() == 1);  // no model.safetensors.tmp-* left behind
  }
  SUBCASE("a successful write replaces the file") {
    const float b[3] = {3, 4, 5};
    safetensors_writer w;
    w.add("b", dtype::f32, {3}, b);
    w.write(path);
    const auto r = safetensors_reader::open(path);
    CHECK_FALSE(r.contains("a"));
    CHECK(r.at("b").to_vector<float>() == std::vector<float>{3, 4, 5});
    CHECK(dir.entries() == 1);
  }
}

// A header can nest arrays a million deep in 2 MB. The reader must refuse
// it like any bad shape, and never dump() such a value into a message
// (nlohmann's dump recurses once per level: a stack overflow). Messages
// show excerpts of a file's values, never whole values.
TEST_CASE("safetensors: deeply nested or huge JSON values give short malformed_file errors") {
  const std::size_t depth = 1000000;
  const std::string deep = std::string(depth, '[') + std::string(depth, ']');
  SUBCASE("a shape entry nested a million deep") {
    const std::string msg =
        expect_rejected(raw_file(R"({"t":{"dtype":"U8","shape":[)" + deep + R"(],"data_offsets":[0,0]}})"));
    CHECK(contains(msg, "shape entries must be non-negative integers, got an array of 1 element"));
    CHECK(msg.size() < 300);
  }
  SUBCASE("deep values elsewhere") {
    CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":)" + deep + R"(,"shape":[],"data_offsets":[0,0]}})")),
                   "non-string \"dtype\""));
    CHECK(contains(expect_rejected(raw_file(R"({"__metadata__":{"k":)" + deep + "}}")), "not a string"));
    CHECK(contains(expect_rejected(raw_file(deep)), "not a JSON object"));
  }
  SUBCASE("unbalanced deep nesting is invalid JSON, reported briefly") {
    const std::string msg = expect_rejected(raw_file(R"({"t":)" + std::string(depth, '[')));
    CHECK(contains(msg, "header is not valid JSON"));
    CHECK(msg.size() < 400);
  }
  SUBCASE("a megabyte-long string where a shape entry belongs is cut") {
    const std::string msg = expect_rejected(
        raw_file(R"({"t":{"dtype":"U8","shape":[")" + std::string(1 << 20, 'x') + R"("],"data_offsets":[0,0]}})"));
    CHECK(contains(msg, "got \"xxxx"));
    CHECK(contains(msg, "..."));
    CHECK(msg.size() < 300);
  }
}

// safetensors_tensor::view() derives strides from the later extents, so an
// empty tensor [0, 4, 2^62] would need a first stride of 2^64: the reader
// refuses it (the writer too), and accepts empty shapes whose strides fit.
TEST_CASE("safetensors: empty tensors whose extents multiply past int64 are refused") {
  CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"F32","shape":[0,4,4611686018427387904],"data_offsets":[0,0]}})")),
                 "tensor 't': shape [0, 4, 4611686018427387904] overflows int64"));
  CHECK(contains(expect_rejected(raw_file(R"({"t":{"dtype":"U8","shape":[4611686018427387904,4,0],"data_offsets":[0,0]}})")),
                 "overflows"));
  std::string header = R"({"t":{"dtype":"F32","shape":[0,4,1099511627776],"data_offsets":[0,0]}})";
  header.resize((header.size() + 7) / 8 * 8, ' ');  // data 8-byte aligned, so view() may be taken
  const auto image = raw_file(header);
  const auto r = safetensors_reader::parse(image.data(), image.size());
  const tensor_view v = r.at("t").view();
  CHECK(v.numel() == 0);
  CHECK(v.strides[0] == int64_t(1) << 42);
  CHECK(v.strides[1] == int64_t(1) << 40);
  CHECK(v.strides[2] == 1);

  safetensors_writer w;
  const auto t = catch_error([&] { w.add("t", dtype::f32, {0, 4, int64_t(1) << 62}, nullptr); });
  CHECK(t.code == errc::invalid_argument);
  CHECK(contains(t.message, "overflows"));
  CHECK(w.size() == 0);
}

// Two writers of one path must not share a temporary file. Here the second
// write runs inside the first one's fill function (same process, same
// moment): with a shared name it truncated and renamed the first writer's
// half-written file, so a corrupt file was published (and the first write
// failed to rename a file that was gone).
TEST_CASE("safetensors writer: concurrent writes of one path each use their own temporary file") {
  io_test::scratch_dir dir;
  const std::string path = dir.file("model.safetensors");
  const std::vector<uint8_t> inner_bytes(10, 0xbb);
  bool nested_done = false;
  safetensors_writer outer;
  outer.add_generated("outer", dtype::u8, {1000}, [&](uint8_t* dst, std::size_t n) {
    if (!nested_done) {  // the first fill only (to_bytes below fills again)
      nested_done = true;
      safetensors_writer inner;
      inner.add("inner", dtype::u8, {10}, inner_bytes.data());
      inner.write(path);  // while the outer writer's temporary file is open
      CHECK(io_test::read_file(path) == inner.to_bytes());
    }
    std::memset(dst, 0xaa, n);
  });
  outer.write(path);
  REQUIRE(nested_done);
  const std::vector<uint8_t> expected = outer.to_bytes();
  CHECK(io_test::read_file(path) == expected);
  const auto r = safetensors_reader::open(path);
  REQUIRE(r.tensors().size() == 1);
  CHECK(r.at("outer").to_vector<uint8_t>() == std::vector<uint8_t>(1000, 0xaa));
  CHECK(dir.entries() == 1);  // no temporary left behind
}

TEST_CASE("combine: one reader over several files' tensors, kept alive without the parts; a name in two parts is refused") {
  io_test::scratch_dir dir;
  const std::vector<float> a = {1, 2, 3}, b = {4, 5};
  const std::vector<int32_t> c = {7, 8, 9, 10};
  {
    safetensors_writer w1, w2;
    w1.add("a", dtype::f32, {3}, a.data());
    w1.set_metadata("format", "pt");
    w2.add("b", dtype::f32, {1, 2}, b.data());
    w2.add("c", dtype::i32, {4}, c.data());
    w2.set_metadata("format", "other");
    w1.write(dir.file("one.safetensors"));
    w2.write(dir.file("two.safetensors"));
  }
  safetensors_reader both;
  {
    std::vector<safetensors_reader> parts = {safetensors_reader::open(dir.file("one.safetensors")),
                                             safetensors_reader::open(dir.file("two.safetensors"))};
    both = safetensors_reader::combine(parts, "both");
  }  // the parts are gone; their mappings live on in `both`
  CHECK(both.source() == "both");
  REQUIRE(both.tensors().size() == 3);
  CHECK(both.at("a").to_vector<float>() == a);
  CHECK(both.at("b").to_vector<float>() == b);
  CHECK(both.at("b").shape == std::vector<int64_t>{1, 2});
  CHECK(both.at("c").to_vector<int32_t>() == c);
  CHECK(both.metadata().at("format") == "pt");  // the earlier part's value
  {
    safetensors_writer w3;
    w3.add("b", dtype::f32, {2}, b.data());
    w3.write(dir.file("three.safetensors"));
  }
  const std::vector<safetensors_reader> clash = {safetensors_reader::open(dir.file("two.safetensors")),
                                                 safetensors_reader::open(dir.file("three.safetensors"))};
  const io_test::thrown t = catch_error([&] { safetensors_reader::combine(clash, "clash"); });
  CHECK(t.code == errc::malformed_file);
  CHECK(contains(t.message, "tensor 'b' is in both '" + dir.file("two.safetensors") + "' and '" +
                                dir.file("three.safetensors") + "'"));
}
