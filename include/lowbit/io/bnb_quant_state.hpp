// lowbit/io/bnb_quant_state.hpp
// Saving and loading a host lowbit::quantized_tensor as safetensors keys laid
// out exactly like a bitsandbytes 4-bit weight (FORMATS.md), so checkpoints
// move between lowbit and the bitsandbytes / Hugging Face ecosystem. For a
// weight stored under key NAME (bitsandbytes uses NAME = "<prefix>weight"):
//   NAME                      uint8 packed codes, shape [code_bytes, 1]
//   NAME.absmax               float32[n_blocks], or uint8[n_blocks] when nested
//   NAME.quant_map            float32[16] (4-bit) or float32[256] (8-bit)
//   NAME.nested_absmax        float32[n_nested_blocks]      (nested only)
//   NAME.nested_quant_map     float32[256] signed dynamic map (nested only)
//   NAME.quant_state.bitsandbytes__nf4 / __fp4
//                             uint8 UTF-8 JSON: quant_type, blocksize, dtype
//                             (original dtype, e.g. "bfloat16"), shape and,
//                             when nested, nested_blocksize 256, nested_dtype
//                             "float32", nested_offset.
// bitsandbytes knows only nf4 and fp4 under this layout. lowbit's other
// formats (int4, int8, dynamic8, udynamic8) use the same keys with the state
// key NAME.quant_state.lowbit__<format> and "quant_type": "<format>"; for the
// 8-bit ones NAME holds one code byte per element and quant_map 256 values.
// Finding a weight (find_quantized_weights) already checks its quant_state
// JSON against the keys present: the element count its shape claims must
// match the sizes of the codes and scales in the file, so a small file cannot
// make a reader allocate for billions of elements, and a weight with two
// quant_state keys is refused. Loading checks every key's dtype and size
// against make_layout's accounting and that the stored maps are lowbit's
// tables (each entry within 4 float32 ulps: same_table_entry below says why;
// a custom quant_map is errc::unsupported), then rebuilds the tensor with its
// logical shape (a rank-0 shape comes back as [1]: quantized_tensor has no
// scalars). Malformed content is errc::malformed_file naming the key at fault.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../formats/codebooks.hpp"
#include "../formats/dynamic_map.hpp"
#include "../formats/format.hpp"
#include "../formats/layout.hpp"
#include "../formats/quantized_view.hpp"
#include "safetensors.hpp"

namespace lowbit {

// The quant_state key suffix for a format: "bitsandbytes__nf4",
// "bitsandbytes__fp4", "lowbit__int4", "lowbit__int8", "lowbit__dynamic8",
// "lowbit__udynamic8".
inline std::string quant_state_suffix(format f) {
  return std::string(f == format::nf4 || f == format::fp4 ? "bitsandbytes__" : "lowbit__") + format_name(f);
}

// The table stored as NAME.quant_map: code c -> normalized value (16 entries
// for 4-bit formats, 256 for 8-bit ones). Zeros are stored as +0.0 (the FP4
// table bitsandbytes builds from Python literals holds +0.0 at code 0b1000).
inline std::vector<float> stored_quant_map(format f) {
  const code_table t = make_code_table(f);
  const int n = is_4bit(f) ? 16 : 256;
  std::vector<float> out(t.value, t.value + n);
  for (float& v : out)
    if (v == 0.0f) v = 0.0f;
  return out;
}

// The keys save_quantized writes for a weight named `name`, in write order.
inline std::vector<std::string> quantized_keys(const std::string& name, format f, bool nested) {
  std::vector<std::string> k{name, name + ".absmax", name + ".quant_map"};
  if (nested) {
    k.push_back(name + ".nested_absmax");
    k.push_back(name + ".nested_quant_map");
  }
  k.push_back(name + ".quant_state." + quant_state_suffix(f));
  return k;
}

// What a file says about one quantized weight (from its quant_state JSON and
// key list, before the data is checked).
struct quantized_weight_info {
  std::string name;        // key of the packed codes, e.g. "model.layers.0.mlp.up_proj.weight"
  std::string state_key;   // name + ".quant_state.bitsandbytes__nf4" etc.
  format fmt = format::nf4;
  int block_size = 64;
  bool nested = false;
  float nested_offset = 0.0f;
  dtype original_dtype = dtype::f32;
  std::vector<int64_t> shape;     // logical shape
  std::vector<std::string> keys;  // this weight's keys present in the file
  std::size_t total_bytes = 0;    // sum of those keys' data bytes

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  blockwise_layout layout() const { return make_layout(fmt, numel(), block_size, nested); }
};

// A weight loaded back: the tensor and the dtype it had before quantization.
struct loaded_quantized {
  quantized_tensor tensor;
  dtype original_dtype = dtype::f32;
};

namespace io_detail {

inline std::string python_style_state_json(const quantized_tensor& q, dtype original) {
  std::string s = "{\"quant_type\": \"" + std::string(format_name(q.layout.fmt)) +
                  "\", \"blocksize\": " + std::to_string(q.layout.block_size) + ", \"dtype\": \"" +
                  dtype_name(original) + "\", \"shape\": [";
  for (std::size_t i = 0; i < q.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(q.shape[i]);
  s += "]";
  if (q.layout.nested) {
    // Python writes offset.item(): the float32 widened to double, shortest repr.
    s += ", \"nested_blocksize\": " + std::to_string(nested_block_size) +
         ", \"nested_dtype\": \"float32\", \"nested_offset\": " + nlohmann::json(double(q.nested_offset)).dump();
  }
  return s + "}";
}

inline dtype parse_original_dtype(const std::string& s, const std::string& what) {
  if (s == "float32") return dtype::f32;
  if (s == "bfloat16") return dtype::bf16;
  if (s == "float16") return dtype::f16;
  throw error(errc::unsupported, what + ": original dtype '" + s + "' is not float32, bfloat16 or float16");
}

// Splits a key "NAME.quant_state.<suffix>" into NAME and the format; false
// when the key is not a quant_state key lowbit recognizes.
inline bool split_state_key(const std::string& key, std::string& name, format& f, std::string& suffix) {
  static const std::string marker = ".quant_state.";
  const std::size_t pos = key.rfind(marker);
  if (pos == std::string::npos || pos == 0) return false;
  suffix = key.substr(pos + marker.size());
  std::string fmt_name;
  if (suffix.rfind("bitsandbytes__", 0) == 0) fmt_name = suffix.substr(14);
  else if (suffix.rfind("lowbit__", 0) == 0) fmt_name = suffix.substr(8);
  else return false;
  name = key.substr(0, pos);
  for (int i = 0; i < format_count; ++i)
    if (fmt_name == format_name(format(i)) && quant_state_suffix(format(i)) == suffix) {
      f = format(i);
      return true;
    }
  throw error(errc::unsupported, "'" + key + "': quantization type '" + suffix + "' is not supported by lowbit");
}

// The weight a second quant_state key claims: errc::malformed_file, since
// the file does not say which format its codes are in.
[[noreturn]] inline void two_quant_states(const safetensors_reader& r, const std::string& name,
                                          const std::string& first_key, const std::string& second_key) {
  throw error(errc::malformed_file, r.source() + ": weight '" + name + "' has two quant_state keys ('" + first_key +
                                        "' and '" + second_key + "')");
}

// Checks that the keys of `info` present in the file have the sizes its
// layout needs: the codes' bytes and the scales' element counts. (Dtypes,
// missing keys and the maps are load_quantized's to check.)
inline void check_sizes(const safetensors_reader& r, const quantized_weight_info& info, const std::string& where) {
  const blockwise_layout l = info.layout();
  const std::string claim = "the quant_state shape " + shape_string(info.shape) + " (" + std::to_string(l.n) +
                            " elements, " + format_name(l.fmt) + " blocks of " + std::to_string(l.block_size) + ")";
  auto check = [&](const std::string& key, int64_t have, int64_t need, const char* unit) {
    if (have != need)
      throw error(errc::malformed_file, where + ": '" + key + "' holds " + std::to_string(have) + " " + unit + " but " +
                                            claim + " needs " + std::to_string(need));
  };
  // Codes by bytes: bitsandbytes may store them in another dtype (quant_storage).
  check(info.name, int64_t(r.at(info.name).nbytes), l.code_bytes(), "code bytes");
  if (const safetensors_tensor* a = r.find(info.name + ".absmax")) check(a->name, a->numel(), l.n_blocks(), "scales");
  if (info.nested)
    if (const safetensors_tensor* a = r.find(info.name + ".nested_absmax"))
      check(a->name, a->numel(), l.n_nested_blocks(), "nested scales");
}

// Parses and checks the quant_state JSON of weight `name`, and the sizes of
// the weight's keys against it.
inline quantized_weight_info parse_state(const safetensors_reader& r, const std::string& name, format f,
                                         const std::string& state_key) {
  using nlohmann::json;
  const std::string where = r.source() + ": '" + state_key + "'";
  auto bad = [&](const std::string& msg) { return error(errc::malformed_file, where + ": " + msg); };
  const safetensors_tensor& st = r.at(state_key);
  if (st.type != dtype::u8 || st.shape.size() != 1) throw bad("must be a 1-D uint8 tensor of JSON text");
  if (utf8_error_offset(st.data, st.nbytes) != st.nbytes) throw bad("is not valid UTF-8");
  if (st.nbytes && std::memchr(st.data, 0, st.nbytes)) throw bad("contains a NUL byte");
  const json j = parse_json(st.data, st.data + st.nbytes, where);
  if (!j.is_object()) throw bad("is not a JSON object");
  auto field = [&](const char* k) -> const json& {
    auto it = j.find(k);
    if (it == j.end()) throw bad(std::string("missing field \"") + k + "\"");
    return *it;
  };
  quantized_weight_info info;
  info.name = name;
  info.state_key = state_key;
  info.fmt = f;
  const json& qt = field("quant_type");
  if (!qt.is_string() || qt.get<std::string>() != format_name(f))
    throw bad("\"quant_type\" " + json_excerpt(qt) + " disagrees with the key suffix (" + format_name(f) + ")");
  const json& bs = field("blocksize");
  const int64_t block = json_nonneg_int(bs);
  if (block < 0) throw bad("\"blocksize\" must be a non-negative integer, got " + json_excerpt(bs));
  if (!is_valid_block_size(block))
    throw error(errc::unsupported, where + ": blocksize " + std::to_string(block) +
                                       " is not supported (lowbit takes powers of two in [32, 4096])");
  info.block_size = int(block);
  const json& dt = field("dtype");
  if (!dt.is_string()) throw bad("\"dtype\" must be a string");
  info.original_dtype = parse_original_dtype(dt.get<std::string>(), where);
  const json& sh = field("shape");
  if (!sh.is_array()) throw bad("\"shape\" must be an array");
  for (const json& d : sh) {
    const int64_t s = json_nonneg_int(d);
    if (s < 0) throw bad("\"shape\" entries must be non-negative integers, got " + json_excerpt(d));
    info.shape.push_back(s);
  }
  // Checked before any layout arithmetic (make_layout refuses more than 2^62).
  if (nonzero_extent_product(info.shape.data(), int(info.shape.size())) < 0)
    throw bad("\"shape\" " + shape_string(info.shape) + " overflows int64");
  if (info.numel() > max_layout_elements)
    throw bad("\"shape\" " + shape_string(info.shape) + " has " + std::to_string(info.numel()) +
              " elements, more than lowbit's layouts hold (2^62)");
  info.nested = j.contains("nested_blocksize") || j.contains("nested_offset") || j.contains("nested_dtype");
  if (info.nested) {
    const json& nb = field("nested_blocksize");
    if (json_nonneg_int(nb) != nested_block_size)
      throw error(errc::unsupported, where + ": nested_blocksize " + json_excerpt(nb) + " is not supported (only 256)");
    const json& nd = field("nested_dtype");
    if (!nd.is_string() || nd.get<std::string>() != "float32")
      throw error(errc::unsupported, where + ": nested_dtype " + json_excerpt(nd) + " is not supported (only float32)");
    const json& no = field("nested_offset");
    if (!no.is_number()) throw bad("\"nested_offset\" must be a number");
    const double off = no.get<double>();
    if (!std::isfinite(off) || std::fabs(off) > double(std::numeric_limits<float>::max())) throw bad("\"nested_offset\" is not a finite float32");
    info.nested_offset = float(off);
  }
  for (const std::string& k : quantized_keys(name, f, info.nested))
    if (const safetensors_tensor* t = r.find(k)) {
      info.keys.push_back(k);
      info.total_bytes += t->nbytes;
    }
  if (!r.contains(name)) throw bad("its packed weight '" + name + "' is missing");
  check_sizes(r, info, where);
  return info;
}

// Checks a key's dtype and element count and returns it.
inline const safetensors_tensor& expect_key(const safetensors_reader& r, const std::string& key, dtype t,
                                            int64_t numel) {
  const safetensors_tensor* e = r.find(key);
  if (!e) throw error(errc::malformed_file, r.source() + ": missing key '" + key + "'");
  if (e->type != t)
    throw error(errc::malformed_file, r.source() + ": '" + key + "' has dtype " + e->dtype_string + ", expected " +
                                          safetensors_dtype_string(t));
  if (e->numel() != numel)
    throw error(errc::malformed_file, r.source() + ": '" + key + "' has " + std::to_string(e->numel()) +
                                          " elements, the layout needs " + std::to_string(numel));
  return *e;
}

// How far (in float32 units in the last place) a stored code-table entry
// may be from lowbit's and still be the same entry. bitsandbytes builds its
// dynamic maps (create_dynamic_map, the nested scales' map and the 8-bit
// optimizer's qmap1 / qmap2) with torch.linspace on the CPU, whose
// vectorized kernels (AVX2, AVX-512) round some points differently from its
// scalar kernel, which lowbit's table equals. Measured with torch 2.15 and
// bitsandbytes 0.50 (2026-11-28): under AVX2 and AVX-512, 42 of the signed
// map's 256 entries and 31 of the unsigned map's differ from lowbit's by 1
// or 2 ulps; with ATEN_CPU_CAPABILITY=default none do. So the map a
// bitsandbytes checkpoint holds depends on the CPU that wrote it. lowbit
// decodes with its own table: a difference below 2^-21 relative, far under
// the gaps between the maps' entries (at least 0.7 % of the entries they
// separate).
constexpr int64_t table_entry_ulp_tolerance = 4;

inline bool same_table_entry(float got, float want) {
  if (got == want) return true;  // also -0 and +0
  if (!std::isfinite(got) || !std::isfinite(want) || std::signbit(got) != std::signbit(want)) return false;
  int32_t a = 0, b = 0;
  std::memcpy(&a, &got, 4);
  std::memcpy(&b, &want, 4);
  const int64_t distance = int64_t(a) - int64_t(b);  // same sign: bit patterns order like the magnitudes
  return distance <= table_entry_ulp_tolerance && -distance <= table_entry_ulp_tolerance;
}

inline void expect_map(const safetensors_reader& r, const std::string& key, const std::vector<float>& want,
                       const char* what) {
  const std::vector<float> got = expect_key(r, key, dtype::f32, int64_t(want.size())).to_vector<float>();
  for (std::size_t i = 0; i < want.size(); ++i)
    if (!same_table_entry(got[i], want[i]))
      throw error(errc::unsupported, r.source() + ": '" + key + "': custom " + what + " (entry " + std::to_string(i) +
                                         " is " + nlohmann::json(double(got[i])).dump() + ", lowbit's table has " +
                                         nlohmann::json(double(want[i])).dump() + ")");
}

}  // namespace io_detail

// Adds the keys of quantized weight `q` under `name` (use "<prefix>weight" for
// bitsandbytes compatibility). `original_dtype` (float32, bfloat16 or float16)
// is recorded as the dtype to dequantize back to. Borrows q's buffers: keep q
// alive and unchanged until the writer has written.
inline void save_quantized(safetensors_writer& w, const std::string& name, const quantized_tensor& q,
                           dtype original_dtype) {
  const blockwise_layout& l = q.layout;
  l.validate(("quantized weight '" + name + "'").c_str());
  require(original_dtype == dtype::f32 || original_dtype == dtype::bf16 || original_dtype == dtype::f16,
          errc::invalid_argument,
          "quantized weight '" + name + "': original dtype must be float32, bfloat16 or float16, got " +
              dtype_name(original_dtype));
  int64_t n = 1;
  for (int64_t s : q.shape) n *= s;
  require(n == l.n, errc::invalid_argument, "quantized weight '" + name + "': shape does not match the layout");
  require(int64_t(q.codes.size()) == l.code_bytes(), errc::invalid_argument,
          "quantized weight '" + name + "': codes has the wrong size");
  if (l.nested)
    require(int64_t(q.absmax_codes.size()) == l.n_blocks() && int64_t(q.nested_absmax.size()) == l.n_nested_blocks(),
            errc::invalid_argument, "quantized weight '" + name + "': nested scales have the wrong size");
  else
    require(int64_t(q.absmax.size()) == l.n_blocks(), errc::invalid_argument,
            "quantized weight '" + name + "': absmax has the wrong size");
  const std::vector<std::string> keys = quantized_keys(name, l.fmt, l.nested);
  for (const std::string& k : keys)
    require(!w.contains(k), errc::invalid_argument, "duplicate tensor name '" + k + "'");

  auto floats = [](const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  w.add(keys[0], dtype::u8, {l.code_bytes(), 1}, q.codes.data());
  if (l.nested) w.add(keys[1], dtype::u8, {l.n_blocks()}, q.absmax_codes.data());
  else w.add(keys[1], dtype::f32, {l.n_blocks()}, q.absmax.data());
  const std::vector<float> map = stored_quant_map(l.fmt);
  w.add_owned(keys[2], dtype::f32, {int64_t(map.size())}, floats(map));
  std::size_t next = 3;
  if (l.nested) {
    w.add(keys[3], dtype::f32, {l.n_nested_blocks()}, q.nested_absmax.data());
    const auto& sm = signed_dynamic_map();
    w.add_owned(keys[4], dtype::f32, {256}, floats(std::vector<float>(sm.begin(), sm.end())));
    next = 5;
  }
  const std::string js = io_detail::python_style_state_json(q, original_dtype);
  w.add_owned(keys[next], dtype::u8, {int64_t(js.size())}, std::vector<uint8_t>(js.begin(), js.end()));
}

// Every quantized weight in the file (bitsandbytes 4-bit or lowbit layout),
// found by its quant_state key, in file order. Parses each quant_state JSON
// and checks the sizes of the keys present against it (errc::malformed_file,
// also for a weight with two quant_state keys); dtypes, missing keys and
// maps are checked by load_quantized.
inline std::vector<quantized_weight_info> find_quantized_weights(const safetensors_reader& r) {
  std::vector<quantized_weight_info> out;
  std::map<std::string, std::string> state_of;  // weight name -> its quant_state key
  for (const safetensors_tensor& t : r.tensors()) {
    std::string name, suffix;
    format f;
    if (!io_detail::split_state_key(t.name, name, f, suffix)) continue;
    auto seen = state_of.emplace(name, t.name);
    if (!seen.second) io_detail::two_quant_states(r, name, seen.first->second, t.name);
    out.push_back(io_detail::parse_state(r, name, f, t.name));
  }
  return out;
}

// The quantized weight stored under `name`, validated key by key.
inline loaded_quantized load_quantized(const safetensors_reader& r, const std::string& name) {
  std::string state_key;
  format fmt = format::nf4;
  for (int i = 0; i < format_count; ++i) {
    const std::string key = name + ".quant_state." + quant_state_suffix(format(i));
    if (!r.contains(key)) continue;
    if (!state_key.empty()) io_detail::two_quant_states(r, name, state_key, key);
    state_key = key;
    fmt = format(i);
  }
  const bool found = !state_key.empty();
  require(found, errc::invalid_argument,
          r.source() + ": '" + name + "' is not a quantized weight (no '" + name + ".quant_state.*' key)");
  const quantized_weight_info info = io_detail::parse_state(r, name, fmt, state_key);
  const blockwise_layout l = info.layout();
  const std::string& s = r.source();
  // bitsandbytes may pack codes into another storage dtype (quant_storage); lowbit reads uint8 only.
  const safetensors_tensor& codes = r.at(name);
  if (codes.type != dtype::u8)
    throw error(errc::unsupported, s + ": '" + name + "' stores codes as " + codes.dtype_string +
                                       "; lowbit reads uint8 quant_storage only");
  io_detail::expect_key(r, name, dtype::u8, l.code_bytes());
  io_detail::expect_map(r, name + ".quant_map", stored_quant_map(l.fmt), "quant_map");
  if (l.nested) {
    io_detail::expect_key(r, name + ".absmax", dtype::u8, l.n_blocks());
    io_detail::expect_key(r, name + ".nested_absmax", dtype::f32, l.n_nested_blocks());
    const auto& sm = signed_dynamic_map();
    io_detail::expect_map(r, name + ".nested_quant_map", std::vector<float>(sm.begin(), sm.end()),
                          "nested_quant_map");
  } else {
    io_detail::expect_key(r, name + ".absmax", dtype::f32, l.n_blocks());
    for (const char* k : {".nested_absmax", ".nested_quant_map"})
      if (r.contains(name + k))
        throw error(errc::malformed_file, s + ": '" + name + k + "' is present but the quant_state has no nested fields");
  }

  loaded_quantized out;
  out.original_dtype = info.original_dtype;
  out.tensor = quantized_tensor(l, info.shape.empty() ? std::vector<int64_t>{1} : info.shape);
  quantized_tensor& q = out.tensor;
  auto copy = [&](const std::string& key, void* dst) {
    const safetensors_tensor& t = r.at(key);
    if (t.nbytes) std::memcpy(dst, t.data, t.nbytes);
  };
  copy(name, q.codes.data());
  if (l.nested) {
    copy(name + ".absmax", q.absmax_codes.data());
    copy(name + ".nested_absmax", q.nested_absmax.data());
    q.nested_offset = info.nested_offset;
  } else {
    copy(name + ".absmax", q.absmax.data());
  }
  return out;
}

}  // namespace lowbit
