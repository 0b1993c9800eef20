// tests/io/test_bnb_quant_state.cpp
// bitsandbytes-compatible quantized weights in safetensors: the exact key
// names, dtypes and shapes FORMATS.md prescribes; a bit-exact save/load round
// trip for every format with and without double quantization; a hand-built
// NF4 file (codes, absmax and JSON written from FORMATS.md facts, not from
// lowbit's quantizer) that must dequantize to float64-computed values; and
// every kind of inconsistent file rejected with the right error code.
#include <doctest/doctest.h>

#include <lowbit/cpu/quantize.hpp>
#include <lowbit/io/bnb_quant_state.hpp>

#include <cstring>
#include <limits>
#include <random>

#include "io_test_util.hpp"

using namespace lowbit;
using io_test::catch_error;
using io_test::contains;

namespace {

const char* const W = "model.layers.0.mlp.up_proj.weight";

// A file taken apart into editable tensors, and put back together.
struct part {
  std::string name;
  dtype type;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<part> parts_of(const std::vector<uint8_t>& image) {
  const auto r = safetensors_reader::parse(image.data(), image.size());
  std::vector<part> out;
  for (const auto& t : r.tensors()) out.push_back({t.name, t.type, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
  return out;
}

std::vector<uint8_t> image_of(const std::vector<part>& parts) {
  safetensors_writer w;
  for (const part& p : parts) w.add_owned(p.name, p.type, p.shape, p.bytes);
  return w.to_bytes();
}

part& find_part(std::vector<part>& parts, const std::string& name) {
  for (part& p : parts)
    if (p.name == name) return p;
  FAIL("no part " << name);
  return parts[0];
}

void set_text(part& p, const std::string& s) {
  p.bytes.assign(s.begin(), s.end());
  p.shape = {int64_t(s.size())};
}

std::vector<uint8_t> floats_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<float> random_floats(std::size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.05f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

quantized_tensor quantize_host(const std::vector<float>& x, const std::vector<int64_t>& shape, format f, int bs,
                               bool nested) {
  quantized_tensor q(make_layout(f, int64_t(x.size()), bs, nested), shape);
  cpu::quantize(make_flat_view(x.data(), int64_t(x.size())), q.view());
  return q;
}

std::vector<uint8_t> saved_image(const quantized_tensor& q, dtype original = dtype::bf16) {
  safetensors_writer w;
  save_quantized(w, W, q, original);
  return w.to_bytes();
}

io_test::thrown load_error(const std::vector<uint8_t>& image) {
  return catch_error([&] {
    const auto r = safetensors_reader::parse(image.data(), image.size(), "edited");
    load_quantized(r, W);
  });
}

const format all_formats[] = {format::nf4, format::fp4, format::int4, format::int8, format::dynamic8, format::udynamic8};

}  // namespace

TEST_CASE("bnb quant state: key names, dtypes and shapes follow bitsandbytes") {
  CHECK(quant_state_suffix(format::nf4) == "bitsandbytes__nf4");
  CHECK(quant_state_suffix(format::fp4) == "bitsandbytes__fp4");
  CHECK(quant_state_suffix(format::int4) == "lowbit__int4");
  CHECK(quant_state_suffix(format::udynamic8) == "lowbit__udynamic8");

  const std::vector<float> x = random_floats(15, 1);  // odd: the last byte holds a padding nibble
  const quantized_tensor q = quantize_host(x, {3, 5}, format::nf4, 64, true);
  const auto image = saved_image(q);
  const auto r = safetensors_reader::parse(image.data(), image.size());
  const std::string p = W;
  const std::vector<std::string> expected = {p,
                                             p + ".absmax",
                                             p + ".quant_map",
                                             p + ".nested_absmax",
                                             p + ".nested_quant_map",
                                             p + ".quant_state.bitsandbytes__nf4"};
  REQUIRE(r.tensors().size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) CHECK(r.tensors()[i].name == expected[i]);
  CHECK(quantized_keys(p, format::nf4, true) == expected);
  CHECK(r.at(p).dtype_string == "U8");
  CHECK(r.at(p).shape == std::vector<int64_t>{8, 1});
  CHECK(r.at(p + ".absmax").dtype_string == "U8");
  CHECK(r.at(p + ".absmax").shape == std::vector<int64_t>{1});
  CHECK(r.at(p + ".quant_map").dtype_string == "F32");
  CHECK(r.at(p + ".quant_map").shape == std::vector<int64_t>{16});
  CHECK(r.at(p + ".nested_absmax").shape == std::vector<int64_t>{1});
  CHECK(r.at(p + ".nested_quant_map").shape == std::vector<int64_t>{256});
  const auto& st = r.at(p + ".quant_state.bitsandbytes__nf4");
  CHECK(st.dtype_string == "U8");
  CHECK(st.shape.size() == 1);
  const std::string json(st.data, st.data + st.nbytes);
  CHECK(json.rfind("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [3, 5], "
                   "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": ",
                   0) == 0);
  CHECK(json.back() == '}');
  // the stored NF4 map is FORMATS.md's table
  const auto map = r.at(p + ".quant_map").to_vector<float>();
  CHECK(map[0] == -1.0f);
  CHECK(map[7] == 0.0f);
  CHECK(map[8] == 0.07958029955625534f);
  CHECK(map[15] == 1.0f);
  const auto nmap = r.at(p + ".nested_quant_map").to_vector<float>();
  CHECK(nmap[0] == -0.99296875f);
  CHECK(nmap[127] == 0.0f);
  CHECK(nmap[255] == 1.0f);

  // non-nested: float32 absmax, no nested keys, the shorter JSON
  const quantized_tensor f = quantize_host(x, {15}, format::fp4, 32, false);
  const auto image2 = saved_image(f, dtype::f16);
  const auto r2 = safetensors_reader::parse(image2.data(), image2.size());
  CHECK(r2.tensors().size() == 4);
  CHECK(r2.at(p + ".absmax").dtype_string == "F32");
  const auto& st2 = r2.at(p + ".quant_state.bitsandbytes__fp4");
  CHECK(std::string(st2.data, st2.data + st2.nbytes) ==
        "{\"quant_type\": \"fp4\", \"blocksize\": 32, \"dtype\": \"float16\", \"shape\": [15]}");
  // FP4 code 0b1000 is stored as +0.0, as bitsandbytes' table holds it
  uint32_t bits8;
  std::memcpy(&bits8, r2.at(p + ".quant_map").data + 32, 4);
  CHECK(bits8 == 0u);

  // lowbit's own formats: same layout, lowbit__ state key and 256-entry map for 8-bit
  const quantized_tensor i8 = quantize_host(x, {15}, format::int8, 64, false);
  const auto image3 = saved_image(i8, dtype::f32);
  const auto r3 = safetensors_reader::parse(image3.data(), image3.size());
  CHECK(r3.at(p).shape == std::vector<int64_t>{15, 1});
  CHECK(r3.at(p + ".quant_map").shape == std::vector<int64_t>{256});
  const auto& st3 = r3.at(p + ".quant_state.lowbit__int8");
  CHECK(contains(std::string(st3.data, st3.data + st3.nbytes), "\"quant_type\": \"int8\""));
}

TEST_CASE("bnb quant state: round trip for every format x nested is bit-exact") {
  // 16770 elements: 263 blocks of 64, so two nested blocks of 256 scales.
  const std::vector<int64_t> shape = {129, 130};
  const std::vector<float> x = random_floats(129 * 130, 7);
  for (format f : all_formats) {
    for (bool nested : {false, true}) {
      for (int bs : {64, 4096}) {
        CAPTURE(format_name(f));
        CAPTURE(nested);
        CAPTURE(bs);
        const quantized_tensor q = quantize_host(x, shape, f, bs, nested);
        const auto image = saved_image(q, dtype::bf16);
        const auto r = safetensors_reader::parse(image.data(), image.size());
        const loaded_quantized l = load_quantized(r, W);
        const quantized_tensor& b = l.tensor;
        CHECK(l.original_dtype == dtype::bf16);
        CHECK(b.layout.fmt == f);
        CHECK(b.layout.n == q.layout.n);
        CHECK(b.layout.block_size == bs);
        CHECK(b.layout.nested == nested);
        CHECK(b.shape == shape);
        CHECK(b.codes == q.codes);
        CHECK(b.absmax == q.absmax);
        CHECK(b.absmax_codes == q.absmax_codes);
        CHECK(b.nested_absmax == q.nested_absmax);
        CHECK(std::memcmp(&b.nested_offset, &q.nested_offset, 4) == 0);

        std::vector<float> y1(x.size()), y2(x.size());
        quantized_tensor qa = q, qb = b;
        cpu::dequantize(qa.view(), make_flat_view(y1.data(), int64_t(y1.size())));
        cpu::dequantize(qb.view(), make_flat_view(y2.data(), int64_t(y2.size())));
        CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * 4) == 0);

        const auto infos = find_quantized_weights(r);
        REQUIRE(infos.size() == 1);
        CHECK(infos[0].name == W);
        CHECK(infos[0].fmt == f);
        CHECK(infos[0].block_size == bs);
        CHECK(infos[0].nested == nested);
        CHECK(infos[0].shape == shape);
        CHECK(infos[0].keys.size() == r.tensors().size());
        CHECK(infos[0].total_bytes == image.size() - r.data_offset());
      }
    }
  }
}

TEST_CASE("bnb quant state: empty and scalar-like tensors round trip") {
  for (bool nested : {false, true}) {
    quantized_tensor q(make_layout(format::nf4, 0, 64, nested), {0, 4});
    cpu::quantize(make_view(static_cast<void*>(nullptr), dtype::f32, {0, 4}), q.view());
    const auto image = saved_image(q);
    const auto r = safetensors_reader::parse(image.data(), image.size());
    const loaded_quantized l = load_quantized(r, W);
    CHECK(l.tensor.layout.n == 0);
    CHECK(l.tensor.shape == std::vector<int64_t>{0, 4});
  }
  const std::vector<float> one = {0.25f};
  const quantized_tensor q = quantize_host(one, {1}, format::nf4, 64, false);
  const auto image = saved_image(q);
  const auto r = safetensors_reader::parse(image.data(), image.size());
  CHECK(load_quantized(r, W).tensor.codes == q.codes);
}

TEST_CASE("bnb quant state: a hand-built NF4 file dequantizes to float64-computed values") {
  // FORMATS.md facts only: the NF4 table, element 2j in the high nibble, one
  // float32 absmax per block of 64, the key names and the JSON fields.
  const double nf4[16] = {-1.0,
                          -0.6961928009986877,
                          -0.5250730514526367,
                          -0.39491748809814453,
                          -0.28444138169288635,
                          -0.18477343022823334,
                          -0.09105003625154495,
                          0.0,
                          0.07958029955625534,
                          0.16093020141124725,
                          0.24611230194568634,
                          0.33791524171829224,
                          0.44070982933044434,
                          0.5626170039176941,
                          0.7229568362236023,
                          1.0};
  const int n = 70;  // two blocks: 64 + 6
  std::vector<int> code(n);
  for (int i = 0; i < n; ++i) code[size_t(i)] = (i * 7 + 3) % 16;
  std::vector<uint8_t> packed(n / 2);
  for (int j = 0; j < n / 2; ++j) packed[size_t(j)] = uint8_t(code[size_t(2 * j)] << 4 | code[size_t(2 * j + 1)]);
  const std::vector<float> absmax = {0.5f, 3.0f};
  std::vector<float> map(16);
  for (int c = 0; c < 16; ++c) map[size_t(c)] = float(nf4[c]);

  for (bool nested : {false, true}) {
    CAPTURE(nested);
    std::vector<double> scale = {0.5, 3.0};
    std::vector<part> parts;
    parts.push_back({W, dtype::u8, {n / 2, 1}, packed});
    std::string json = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [7, 10]";
    if (!nested) {
      parts.push_back({std::string(W) + ".absmax", dtype::f32, {2}, floats_bytes(absmax)});
      parts.push_back({std::string(W) + ".quant_map", dtype::f32, {16}, floats_bytes(map)});
    } else {
      // scale_i = nested_quant_map[code_i] * nested_absmax[i / 256] + offset, with
      // the map's anchors [255] = 1.0 and [127] = 0.0 from FORMATS.md.
      const auto& dyn = signed_dynamic_map();
      REQUIRE(dyn[255] == 1.0f);
      REQUIRE(dyn[127] == 0.0f);
      parts.push_back({std::string(W) + ".absmax", dtype::u8, {2}, {255, 127}});
      parts.push_back({std::string(W) + ".quant_map", dtype::f32, {16}, floats_bytes(map)});
      parts.push_back({std::string(W) + ".nested_absmax", dtype::f32, {1}, floats_bytes({2.0f})});
      parts.push_back({std::string(W) + ".nested_quant_map", dtype::f32, {256},
                       floats_bytes(std::vector<float>(dyn.begin(), dyn.end()))});
      json += ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.75";
      scale = {1.0 * 2.0 + 0.75, 0.0 * 2.0 + 0.75};
    }
    json += "}";
    parts.push_back({std::string(W) + ".quant_state.bitsandbytes__nf4", dtype::u8, {int64_t(json.size())},
                     std::vector<uint8_t>(json.begin(), json.end())});
    const auto image = image_of(parts);
    const auto r = safetensors_reader::parse(image.data(), image.size());
    loaded_quantized l = load_quantized(r, W);
    CHECK(l.original_dtype == dtype::f16);
    CHECK(l.tensor.shape == std::vector<int64_t>{7, 10});
    std::vector<float> y(n, -123.0f);
    cpu::dequantize(l.tensor.view(), make_flat_view(y.data(), n));
    for (int i = 0; i < n; ++i) {
      // A float32 table value times a float32 scale is exact in float64; the
      // kernel rounds that product once to float32.
      const double expect = nf4[code[size_t(i)]] * scale[size_t(i / 64)];
      CHECK(y[size_t(i)] == float(expect));
    }
  }
}

TEST_CASE("bnb quant state: finding quantized weights among plain tensors") {
  const std::vector<float> x = random_floats(300, 3);
  const quantized_tensor a = quantize_host(x, {10, 30}, format::nf4, 64, true);
  const quantized_tensor b = quantize_host(x, {300}, format::int8, 128, false);
  const float bias[3] = {1, 2, 3};
  safetensors_writer w;
  w.add("c.bias", dtype::f32, {3}, bias);
  save_quantized(w, "a.weight", a, dtype::bf16);
  save_quantized(w, "b.weight", b, dtype::f32);
  const auto image = w.to_bytes();
  const auto r = safetensors_reader::parse(image.data(), image.size());
  const auto infos = find_quantized_weights(r);
  REQUIRE(infos.size() == 2);
  CHECK(infos[0].name == "a.weight");
  CHECK(infos[0].state_key == "a.weight.quant_state.bitsandbytes__nf4");
  CHECK(infos[0].keys.size() == 6);
  CHECK(infos[0].original_dtype == dtype::bf16);
  CHECK(infos[0].nested_offset == a.nested_offset);
  CHECK(infos[1].name == "b.weight");
  CHECK(infos[1].fmt == format::int8);
  CHECK(infos[1].block_size == 128);
  CHECK(infos[1].keys.size() == 4);
  std::size_t bytes = 0;
  for (const auto& k : infos[1].keys) bytes += r.at(k).nbytes;
  CHECK(infos[1].total_bytes == bytes);
  CHECK(infos[1].layout().total_bytes() == b.layout.total_bytes());
  const auto plain = catch_error([&] { load_quantized(r, "c.bias"); });
  CHECK(plain.code == errc::invalid_argument);
  CHECK(contains(plain.message, "c.bias"));
}

TEST_CASE("bnb quant state: save_quantized checks its arguments") {
  const std::vector<float> x = random_floats(100, 4);
  const quantized_tensor q = quantize_host(x, {100}, format::nf4, 64, false);
  safetensors_writer w;
  CHECK(catch_error([&] { save_quantized(w, W, q, dtype::i8); }).code == errc::invalid_argument);
  CHECK(w.size() == 0);
  save_quantized(w, W, q, dtype::f32);
  const auto dup = catch_error([&] { save_quantized(w, W, q, dtype::f32); });
  CHECK(dup.code == errc::invalid_argument);
  CHECK(contains(dup.message, "duplicate"));
  quantized_tensor broken = q;
  broken.absmax.pop_back();
  safetensors_writer w2;
  CHECK(catch_error([&] { save_quantized(w2, W, broken, dtype::f32); }).code == errc::invalid_argument);
}

TEST_CASE("bnb quant state: inconsistent files are rejected") {
  const std::vector<float> x = random_floats(1000, 5);
  const auto nested_parts = parts_of(saved_image(quantize_host(x, {1000}, format::nf4, 64, true)));
  const auto plain_parts = parts_of(saved_image(quantize_host(x, {1000}, format::fp4, 64, false)));
  const std::string p = W;
  const std::string nf4_state = p + ".quant_state.bitsandbytes__nf4";
  const std::string fp4_state = p + ".quant_state.bitsandbytes__fp4";

  SUBCASE("control: unedited files load") {
    CHECK_FALSE(load_error(image_of(nested_parts)).threw);
    CHECK_FALSE(load_error(image_of(plain_parts)).threw);
  }
  SUBCASE("custom quant_map") {
    auto parts = nested_parts;
    part& m = find_part(parts, p + ".quant_map");
    float v = 0.5f;
    std::memcpy(m.bytes.data() + 12, &v, 4);
    const auto t = load_error(image_of(parts));
    CHECK(t.code == errc::unsupported);
    CHECK(contains(t.message, "custom quant_map"));
    CHECK(contains(t.message, p + ".quant_map"));
  }
  SUBCASE("quant_map with -0.0 is the same table") {
    auto parts = plain_parts;
    part& m = find_part(parts, p + ".quant_map");
    const float nz = -0.0f;
    std::memcpy(m.bytes.data() + 32, &nz, 4);
    CHECK_FALSE(load_error(image_of(parts)).threw);
  }
  // bitsandbytes builds the nested map with torch.linspace, whose
  // vectorized CPU kernels leave some entries 1 or 2 ulps from lowbit's
  // table: within 4 ulps the map is lowbit's, beyond it a custom one.
  auto nudge = [](part& m, int entry, int ulps) {
    int32_t bits;
    std::memcpy(&bits, m.bytes.data() + 4 * entry, 4);
    bits += ulps;
    std::memcpy(m.bytes.data() + 4 * entry, &bits, 4);
  };
  SUBCASE("custom nested_quant_map") {
    auto parts = nested_parts;
    part& m = find_part(parts, p + ".nested_quant_map");
    nudge(m, 10, 5);
    const auto t = load_error(image_of(parts));
    CHECK(t.code == errc::unsupported);
    CHECK(contains(t.message, "custom nested_quant_map"));
    CHECK(contains(t.message, "entry 10"));
  }
  SUBCASE("nested_quant_map within 4 ulps of lowbit's table is lowbit's") {
    auto parts = nested_parts;
    part& m = find_part(parts, p + ".nested_quant_map");
    for (int e = 1; e < 255; e += 3) nudge(m, e, e % 2 ? 4 : -2);
    CHECK_FALSE(load_error(image_of(parts)).threw);
  }
  SUBCASE("quant_map of the wrong length") {
    auto parts = plain_parts;
    part& m = find_part(parts, p + ".quant_map");
    m.bytes.resize(60);
    m.shape = {15};
    CHECK(load_error(image_of(parts)).code == errc::malformed_file);
  }
  SUBCASE("absmax of the wrong size or dtype") {
    auto parts = plain_parts;
    part& a = find_part(parts, p + ".absmax");
    a.bytes.resize(a.bytes.size() - 4);
    a.shape = {a.shape[0] - 1};
    const auto t = load_error(image_of(parts));
    CHECK(t.code == errc::malformed_file);
    CHECK(contains(t.message, p + ".absmax"));
    auto parts2 = nested_parts;
    find_part(parts2, p + ".absmax").type = dtype::i8;
    CHECK(load_error(image_of(parts2)).code == errc::malformed_file);
  }
  SUBCASE("codes of the wrong size, or in another storage dtype") {
    auto parts = plain_parts;
    part& c = find_part(parts, p);
    c.bytes.push_back(0);
    c.shape = {c.shape[0] + 1, 1};
    CHECK(load_error(image_of(parts)).code == errc::malformed_file);
    auto parts2 = plain_parts;
    part& c2 = find_part(parts2, p);
    c2.type = dtype::bf16;
    c2.shape = {c2.shape[0] / 2, 1};
    const auto t = load_error(image_of(parts2));
    CHECK(t.code == errc::unsupported);
    CHECK(contains(t.message, "quant_storage"));
  }
  SUBCASE("missing keys") {
    for (const std::string& k : {p + ".absmax", p + ".quant_map", p + ".nested_absmax", p + ".nested_quant_map"}) {
      auto parts = nested_parts;
      parts.erase(std::find_if(parts.begin(), parts.end(), [&](const part& x) { return x.name == k; }));
      const auto t = load_error(image_of(parts));
      CHECK(t.code == errc::malformed_file);
      CHECK(contains(t.message, k));
    }
    auto parts = nested_parts;
    parts.erase(parts.begin());  // the packed weight itself
    const auto image = image_of(parts);
    const auto r = safetensors_reader::parse(image.data(), image.size());
    CHECK(catch_error([&] { find_quantized_weights(r); }).code == errc::malformed_file);
  }
  SUBCASE("nested keys without nested fields in the quant_state") {
    auto parts = plain_parts;
    parts.push_back({p + ".nested_absmax", dtype::f32, {1}, floats_bytes({1.0f})});
    const auto t = load_error(image_of(parts));
    CHECK(t.code == errc::malformed_file);
    CHECK(contains(t.message, "no nested fields"));
  }
  SUBCASE("quant_state JSON problems") {
    struct bad_json {
      std::string text;
      errc code;
      const char* needle;
    };
    const std::string shape = "\"shape\": [1000]";
    const bad_json cases[] = {
        {"not json", errc::malformed_file, "not valid JSON"},
        {"[1, 2]", errc::malformed_file, "not a JSON object"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\"}", errc::malformed_file, "shape"},
        {"{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", " + shape + "}", errc::malformed_file,
         "disagrees"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"float32\", " + shape + "}", errc::unsupported,
         "blocksize 48"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": -64, \"dtype\": \"float32\", " + shape + "}", errc::malformed_file,
         "blocksize"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"int8\", " + shape + "}", errc::unsupported,
         "int8"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [1001]}",
         errc::malformed_file, "elements"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [-1000]}",
         errc::malformed_file, "shape"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [4294967296, 4294967296]}",
         errc::malformed_file, "overflows"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", " + shape +
             ", \"nested_blocksize\": 128, \"nested_dtype\": \"float32\", \"nested_offset\": 0.1}",
         errc::unsupported, "nested_blocksize"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", " + shape +
             ", \"nested_blocksize\": 256, \"nested_dtype\": \"float16\", \"nested_offset\": 0.1}",
         errc::unsupported, "nested_dtype"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", " + shape +
             ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 1e300}",
         errc::malformed_file, "nested_offset"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", " + shape +
             ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\"}",
         errc::malformed_file, "nested_offset"},
        {std::string("{\"quant_type\": \"nf4\"}\0", 22), errc::malformed_file, "NUL"},
        {"{\"quant_type\": \"nf\xff\"}", errc::malformed_file, "UTF-8"},
    };
    for (const bad_json& c : cases) {
      CAPTURE(c.text);
      auto parts = nested_parts;
      set_text(find_part(parts, nf4_state), c.text);
      const auto t = load_error(image_of(parts));
      CHECK(t.lowbit);
      CHECK(t.code == c.code);
      CHECK(contains(t.message, c.needle));
      CHECK(contains(t.message, "edited"));
    }
    auto parts = nested_parts;
    find_part(parts, nf4_state).type = dtype::i8;
    CHECK(load_error(image_of(parts)).code == errc::malformed_file);
  }
  SUBCASE("quant_state suffixes lowbit does not know") {
    auto parts = plain_parts;
    find_part(parts, fp4_state).name = p + ".quant_state.bitsandbytes__af4";
    const auto image = image_of(parts);
    const auto r = safetensors_reader::parse(image.data(), image.size());
    const auto t = catch_error([&] { find_quantized_weights(r); });
    CHECK(t.code == errc::unsupported);
    CHECK(contains(t.message, "bitsandbytes__af4"));
    // an unrelated ".quant_state." name is just a tensor
    auto parts2 = plain_parts;
    parts2.push_back({"x.quant_state.other", dtype::u8, {1}, {1}});
    const auto image2 = image_of(parts2);
    const auto r2 = safetensors_reader::parse(image2.data(), image2.size());
    CHECK(find_quantized_weights(r2).size() == 1);
  }
}

// Real bitsandbytes checkpoints (tests/data/bnb, written by bitsandbytes 0.50
// through tools/make_bnb_fixture.py): lowbit loads each and dequantizes it
// to bitsandbytes' own dequantize_4bit output within 2^-20 of the largest
// weight (both compute code value x block scale in float32; the nested
// scales' offset is added in a different order). The nested files were made
// on an AVX-512 CPU, where torch's vectorized linspace leaves entries of
// bitsandbytes' dynamic map 1 or 2 ulps from lowbit's table, so they also
// check that such a map is accepted (until 2026-11-28 lowbit refused them).
TEST_CASE("bitsandbytes-written NF4 / FP4 weights load and dequantize to bitsandbytes' values") {
  const std::string dir = std::string(LOWBIT_TEST_DATA_DIR) + "/bnb/";
  for (const char* file : {"nf4_nested", "nf4", "fp4_nested", "fp4"}) {
    CAPTURE(file);
    const safetensors_reader r = safetensors_reader::open(dir + file + ".safetensors");
    const loaded_quantized w = load_quantized(r, "weight");
    const quantized_tensor& q = w.tensor;
    CHECK(q.layout.fmt == (file[0] == 'n' ? format::nf4 : format::fp4));
    CHECK(q.layout.nested == (std::string(file).find("nested") != std::string::npos));
    CHECK(q.shape == std::vector<int64_t>{48, 192});
    const std::vector<float> ref = r.at("reference.dequantized").to_vector<float>();
    REQUIRE(ref.size() == size_t(q.layout.n));
    std::vector<float> mine(ref.size());
    quantized_tensor copy = q;
    cpu::dequantize(copy.view(), make_flat_view(mine.data(), int64_t(mine.size())));
    float largest = 0.0f, worst = 0.0f;
    for (size_t i = 0; i < ref.size(); ++i) {
      largest = std::max(largest, std::fabs(ref[i]));
      worst = std::max(worst, std::fabs(mine[i] - ref[i]));
    }
    CHECK(largest > 0.1f);  // N(0, 0.05^2) over 9216 values
    CHECK(worst <= std::ldexp(largest, -20));
    if (q.layout.nested) {  // the map really is one of the off-by-ulps ones
      const std::vector<float> map = r.at("weight.nested_quant_map").to_vector<float>();
      const auto& mine_map = signed_dynamic_map();
      int differ = 0;
      for (size_t e = 0; e < 256; ++e) differ += std::memcmp(&map[e], &mine_map[e], 4) != 0;
      CHECK(differ > 0);
    }
  }
}

namespace {

// A 4-element NF4 weight "w" (2 code bytes, 1 scale) whose quant_state JSON
// is `state` (under `suffix`), as a crafted file would hold it.
std::vector<uint8_t> crafted_weight(const std::string& state, const std::string& suffix = "bitsandbytes__nf4") {
  safetensors_writer w;
  w.add_owned("w", dtype::u8, {2, 1}, {0xf0, 0x7f});
  w.add_owned("w.absmax", dtype::f32, {1}, floats_bytes({2.0f}));
  w.add_owned("w.quant_map", dtype::f32, {16}, floats_bytes(stored_quant_map(format::nf4)));
  w.add_owned("w.quant_state." + suffix, dtype::u8, {int64_t(state.size())},
              std::vector<uint8_t>(state.begin(), state.end()));
  return w.to_bytes();
}

std::string nf4_state(const std::string& shape) {
  return "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": " + shape + "}";
}

// find_quantized_weights and load_quantized must both refuse `image` with
// errc::malformed_file; returns find's message.
std::string refused_by_both(const std::vector<uint8_t>& image) {
  const auto r = safetensors_reader::parse(image.data(), image.size(), "crafted");
  const auto found = catch_error([&] { find_quantized_weights(r); });
  const auto loaded = catch_error([&] { load_quantized(r, "w"); });
  CHECK(found.lowbit);
  CHECK_MESSAGE(found.code == errc::malformed_file, found.message);
  CHECK(loaded.lowbit);
  CHECK_MESSAGE(loaded.code == errc::malformed_file, loaded.message);
  CHECK(contains(found.message, "crafted"));
  CHECK(found.message.size() < 400);
  return found.message;
}

}  // namespace

TEST_CASE("bnb quant state: the shape's element count must match the sizes of the keys in the file") {
  const auto control = crafted_weight(nf4_state("[2, 2]"));
  const auto r = safetensors_reader::parse(control.data(), control.size());
  REQUIRE(find_quantized_weights(r).size() == 1);
  CHECK(load_quantized(r, "w").tensor.shape == std::vector<int64_t>{2, 2});

  // 464 bytes claiming 2^28 elements: refused before anything is allocated
  const auto big = crafted_weight(nf4_state("[268435456]"));
  const std::string msg = refused_by_both(big);
  CHECK(contains(msg, "'w' holds 2 code bytes"));
  CHECK(contains(msg, "[268435456]"));
  CHECK(contains(msg, "134217728"));

  // the codes fit the shape, the scales do not (2 blocks for 4 elements)
  safetensors_writer w;
  w.add_owned("w", dtype::u8, {2, 1}, {0xf0, 0x7f});
  w.add_owned("w.absmax", dtype::f32, {2}, floats_bytes({2.0f, 1.0f}));
  w.add_owned("w.quant_map", dtype::f32, {16}, floats_bytes(stored_quant_map(format::nf4)));
  const std::string st = nf4_state("[4]");
  w.add_owned("w.quant_state.bitsandbytes__nf4", dtype::u8, {int64_t(st.size())},
              std::vector<uint8_t>(st.begin(), st.end()));
  CHECK(contains(refused_by_both(w.to_bytes()), "'w.absmax' holds 2 scales"));
}

TEST_CASE("bnb quant state: shapes near INT64_MAX are malformed, with no overflow on the way") {
  CHECK(contains(refused_by_both(crafted_weight(nf4_state("[9223372036854775807]"))), "more than lowbit's layouts hold"));
  CHECK(contains(refused_by_both(crafted_weight(nf4_state("[4611686018427387905]"))), "more than"));
  CHECK(contains(refused_by_both(crafted_weight(nf4_state("[0, 4, 4611686018427387904]"))), "overflows"));
  // The layout itself: counts without overflow for any n, and a cap in validate().
  const int64_t huge = std::numeric_limits<int64_t>::max();
  const blockwise_layout l{format::nf4, huge, 64, true};
  CHECK(l.n_blocks() == int64_t(1) << 57);        // ceil((2^63 - 1) / 64)
  CHECK(l.n_nested_blocks() == int64_t(1) << 49);  // 2^57 / 256
  CHECK(l.code_bytes() == int64_t(1) << 62);       // ceil((2^63 - 1) / 2)
  const auto t = catch_error([&] { make_layout(format::nf4, huge, 64, false); });
  CHECK(t.code == errc::invalid_argument);
  CHECK(contains(t.message, "exceeds 2^62"));
  const blockwise_layout most = make_layout(format::int8, max_layout_elements, 4096, false);
  CHECK(most.total_bytes() == max_layout_elements + 4 * (max_layout_elements / 4096));
}

TEST_CASE("bnb quant state: two quant_state keys for one weight are malformed") {
  std::vector<part> parts = parts_of(crafted_weight(nf4_state("[4]")));
  const std::string fp4 = "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4]}";
  parts.push_back({"w.quant_state.bitsandbytes__fp4", dtype::u8, {}, {}});
  set_text(parts.back(), fp4);
  const std::string msg = refused_by_both(image_of(parts));
  CHECK(contains(msg, "weight 'w' has two quant_state keys"));
  CHECK(contains(msg, "w.quant_state.bitsandbytes__nf4"));
  CHECK(contains(msg, "w.quant_state.bitsandbytes__fp4"));
}

// nlohmann's dump() recurses once per nesting level: a quant_state JSON
// nested a million deep used to overflow the stack when its value went into
// an error message.
TEST_CASE("bnb quant state: deeply nested or huge JSON values give short malformed_file errors") {
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  CHECK(contains(refused_by_both(crafted_weight(
                     "{\"quant_type\": " + deep + ", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4]}")),
                 "\"quant_type\" an array of 1 element disagrees"));
  CHECK(contains(refused_by_both(crafted_weight(nf4_state("[" + deep + "]"))), "got an array of 1 element"));
  CHECK(contains(refused_by_both(crafted_weight(
                     "{\"quant_type\": \"nf4\", \"blocksize\": " + deep + ", \"dtype\": \"bfloat16\", \"shape\": [4]}")),
                 "\"blocksize\""));
  const std::string long_type = "\"" + std::string(1 << 20, 'q') + "\"";
  CHECK(contains(refused_by_both(crafted_weight(
                     "{\"quant_type\": " + long_type + ", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4]}")),
                 "\"qqqq"));
  // unsupported nested fields: still a short message, errc::unsupported
  const auto image = crafted_weight("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4], "
                                    "\"nested_blocksize\": 256, \"nested_dtype\": " + deep + ", \"nested_offset\": 0}");
  const auto r = safetensors_reader::parse(image.data(), image.size());
  const auto t = catch_error([&] { find_quantized_weights(r); });
  CHECK(t.code == errc::unsupported);
  CHECK(contains(t.message, "nested_dtype an array of 1 element"));
  const auto bad = crafted_weight("{\"quant_type\": " + std::string(1000000, '['));
  const auto rb = safetensors_reader::parse(bad.data(), bad.size());
  const auto tb = catch_error([&] { find_quantized_weights(rb); });
  CHECK(tb.code == errc::malformed_file);
  CHECK(contains(tb.message, "is not valid JSON"));
  CHECK(tb.message.size() < 400);
}

// tests/data/bnb/thresholds.safetensors (tools/make_bnb_fixture.py): every
// decision point of the NF4 and FP4 encoders (the float32 midpoints of
// neighbouring values), with the 24 floats on either side (FP4 on both
// signs), in blocks of scale 1, and the codes bitsandbytes 0.50's CPU
// quantize_4bit gave them. NF4: the same bytes. FP4: the same bytes but for
// two known differences of bitsandbytes' CPU path, which decode alike or
// differ only on an exact tie: the sign of a zero code (it writes 0b1000,
// "negative zero", for small positive inputs and 0 for some small negative
// ones; lowbit takes the input's sign), and an input exactly on a negative
// midpoint takes the larger magnitude (lowbit, like bitsandbytes' CUDA
// kernel, compares magnitudes with strict >: the smaller).
TEST_CASE("NF4 and FP4 codes on and around every decision point, against bitsandbytes' CPU quantizer") {
  const std::string dir = std::string(LOWBIT_TEST_DATA_DIR) + "/bnb/";
  const safetensors_reader r = safetensors_reader::open(dir + "thresholds.safetensors");
  const std::vector<float> x = r.at("input").to_vector<float>();
  REQUIRE(x.size() % 64 == 0);
  REQUIRE(x.size() > 1000);
  for (format f : {format::nf4, format::fp4}) {
    const std::string name = format_name(f);
    CAPTURE(name);
    const std::vector<uint8_t> packed = r.at(name + ".codes").to_vector<uint8_t>();
    quantized_tensor q(make_layout(f, int64_t(x.size()), 64, false));
    cpu::quantize(make_flat_view(x.data(), int64_t(x.size())), q.view());
    for (float a : q.absmax) REQUIRE(a == 1.0f);
    REQUIRE(q.codes.size() == packed.size());
    int zero_sign = 0, negative_tie = 0, other = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const int shift = i % 2 ? 0 : 4;  // element 2j in the high nibble
      const int mine = (q.codes[i / 2] >> shift) & 15, theirs = (packed[i / 2] >> shift) & 15;
      if (mine == theirs) continue;
      const float v = x[i];
      if (f == format::fp4 && fp4_value(mine) == 0.0f && fp4_value(theirs) == 0.0f) {
        ++zero_sign;
      } else if (f == format::fp4 && v < 0.0f && std::fabs(fp4_value(theirs)) > std::fabs(fp4_value(mine)) &&
                 v == float((double(fp4_value(mine)) + double(fp4_value(theirs))) / 2.0)) {  // the float32 midpoint
        ++negative_tie;
      } else {
        if (++other <= 4) MESSAGE("input " << v << ": lowbit code " << mine << ", bitsandbytes " << theirs);
      }
    }
    CHECK(other == 0);
    if (f == format::fp4) {  // the fixture holds both kinds
      CHECK(zero_sign > 0);
      CHECK(negative_tie == 7);  // one per negative midpoint
    } else {
      CHECK(zero_sign + negative_tie == 0);
    }
  }
}
