// tools/lowbit.cpp
// The `lowbit` command-line tool: `inspect` lists a safetensors file's
// tensors (quantized weights grouped, with format, block size, logical shape,
// bytes and bits per parameter), `quantize` turns the floating-point weight
// matrices of a checkpoint into bitsandbytes-compatible 4-bit (or lowbit
// int4 / int8) keys and copies everything else unchanged, `dequantize` does
// the reverse, and `demo` runs all three on a small random model-like file.
// All math goes through lowbit::cpu::quantize / dequantize and all file
// access through lowbit/io; this file is argument parsing and reporting.
// Exit status: 0 success, 1 a lowbit::error (message on stderr), 2 bad usage.
#include <lowbit/io/io.hpp>
#include <lowbit/lowbit.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace {

using lowbit::dtype;
using lowbit::errc;
using lowbit::format;

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* const main_usage =
    "usage: lowbit <command> [options]\n"
    "\n"
    "commands:\n"
    "  inspect FILE.safetensors        list tensors, quantized weights, bytes and bits/param\n"
    "  quantize IN OUT --format F ...  quantize weight matrices (bitsandbytes-compatible keys)\n"
    "  dequantize IN OUT [--dtype D]   turn quantized weights back into dense tensors\n"
    "  demo [DIR]                      quantize and dequantize a small random model in DIR (/tmp)\n"
    "\n"
    "'lowbit <command> --help' describes a command.\n";

const char* const inspect_usage =
    "usage: lowbit inspect FILE.safetensors\n"
    "\n"
    "Lists every tensor with its dtype, shape, bytes and bits per parameter. A\n"
    "quantized weight (bitsandbytes 4-bit keys or lowbit's own) is one line: its\n"
    "format, block size, '+dq' when its scales are double-quantized, its logical\n"
    "shape, and the bytes of all its keys (codes, scales, maps, quant_state).\n"
    "Ends with totals and the file's __metadata__.\n";

const char* const quantize_usage =
    "usage: lowbit quantize IN OUT --format nf4|fp4|int4|int8 [--blocksize 64]\n"
    "                       [--double-quant] [--include REGEX] [--exclude REGEX]\n"
    "\n"
    "Quantizes float32 / bfloat16 / float16 tensors of IN blockwise and writes OUT\n"
    "(atomically: OUT is replaced only once complete). Other tensors, and weights\n"
    "that are already quantized, are copied unchanged.\n"
    "\n"
    "Which tensors: by default the 2-D ones whose names do not match\n"
    "'embed|norm|lm_head'. --include REGEX replaces that rule: every floating\n"
    "tensor whose name matches REGEX (any rank but 0: scalars and empty tensors\n"
    "are always copied). --exclude REGEX then drops names that match it.\n"
    "Regexes are ECMAScript, searched anywhere in the name.\n"
    "\n"
    "  --format F        nf4, fp4 (bitsandbytes keys ...quant_state.bitsandbytes__F),\n"
    "                    int4, int8 (same layout, ...quant_state.lowbit__F)\n"
    "  --blocksize N     elements per block: power of two in [32, 4096] (default 64)\n"
    "  --double-quant    quantize the block scales too (8-bit, nested blocks of 256)\n"
    "\n"
    "Prints one line per quantized tensor and a summary. Relative error is\n"
    "||w - deq(q(w))||_2 / ||w||_2 over the whole tensor (sums in float64, deq in\n"
    "float32); the summary gives its mean over tensors and its maximum.\n";

const char* const dequantize_usage =
    "usage: lowbit dequantize IN OUT [--dtype bf16|fp16|fp32]\n"
    "\n"
    "Replaces every quantized weight of IN (bitsandbytes 4-bit keys or lowbit's)\n"
    "by a dense tensor of its logical shape, in --dtype or, by default, the dtype\n"
    "recorded in its quant_state. Other tensors are copied unchanged. OUT is\n"
    "written atomically.\n";

const char* const demo_usage =
    "usage: lowbit demo [DIR]\n"
    "\n"
    "Builds a small random model-like set of bfloat16 tensors (embedding, two\n"
    "transformer layers, norms, lm_head), writes DIR/lowbit-demo.safetensors\n"
    "(DIR defaults to /tmp), quantizes it to NF4 with double quantization,\n"
    "inspects the result, dequantizes it, and prints a table of bits per\n"
    "parameter and relative errors.\n";

// ---- small helpers -----------------------------------------------------------

// A lowbit::error's message without the "lowbit: <kind>: " prefix.
std::string bare_message(const lowbit::error& e) {
  std::string m = e.what();
  const std::string prefix = std::string("lowbit: ") + lowbit::errc_name(e.code()) + ": ";
  return m.rfind(prefix, 0) == 0 ? m.substr(prefix.size()) : m;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) b /= 1024.0, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

std::string dims_string(const std::vector<int64_t>& shape, const char* sep) {
  std::string s;
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? sep : "") + std::to_string(shape[i]);
  return shape.empty() ? std::string("scalar") : s;
}

std::string bracket_shape(const std::vector<int64_t>& shape) { return "[" + dims_string(shape, ", ") + "]"; }

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

bool quantizable_dtype(dtype t) { return t == dtype::f32 || t == dtype::bf16 || t == dtype::f16; }

// total += add, refusing a sum past the type's range (inspect adds counts a
// file claims; the library validates them, this keeps the sums honest).
template <class T>
void add_to_total(T& total, T add, const std::string& what) {
  if (__builtin_add_overflow(total, add, &total))
    throw lowbit::error(errc::malformed_file, what + " overflows " + std::to_string(sizeof(T) * 8) + "-bit integers");
}

// The tensor's elements as float (any alignment).
std::vector<float> to_floats(const lowbit::safetensors_tensor& t) {
  const int64_t n = t.numel();
  std::vector<float> out(std::size_t(n), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    if (t.type == dtype::f32) {
      std::memcpy(&out[std::size_t(i)], t.data + 4 * i, 4);
    } else {
      uint16_t bits;
      std::memcpy(&bits, t.data + 2 * i, 2);
      out[std::size_t(i)] = t.type == dtype::bf16 ? lowbit::to_float(lowbit::bf16{bits})
                                                  : lowbit::to_float(lowbit::fp16{bits});
    }
  }
  return out;
}

// ||a - b||_2 / ||a||_2 in float64 (0 when both are zero).
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(a[i]) * double(a[i]);
  }
  if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

std::string layout_label(format f, int block, bool nested) {
  return std::string(lowbit::format_name(f)) + " bs" + std::to_string(block) + (nested ? " +dq" : "");
}

// ---- argument parsing ----------------------------------------------------------

struct parsed_args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;  // "--format" -> "nf4"
  std::set<std::string> flags;                // "--double-quant"
  bool help = false;
};

parsed_args parse_args(int argc, char** argv, int first, const std::set<std::string>& value_options,
                       const std::set<std::string>& flag_options) {
  parsed_args a;
  bool options_done = false;
  for (int i = first; i < argc; ++i) {
    std::string s = argv[i];
    if (options_done || s.size() < 2 || s[0] != '-') {
      a.positional.push_back(s);
      continue;
    }
    if (s == "--") {
      options_done = true;
      continue;
    }
    if (s == "--help" || s == "-h") {
      a.help = true;
      continue;
    }
    std::string value;
    bool has_value = false;
    const std::size_t eq = s.find('=');
    if (eq != std::string::npos) {
      value = s.substr(eq + 1);
      s = s.substr(0, eq);
      has_value = true;
    }
    if (flag_options.count(s)) {
      if (has_value) throw usage_error("option " + s + " takes no value");
      a.flags.insert(s);
    } else if (value_options.count(s)) {
      if (!has_value) {
        if (i + 1 >= argc) throw usage_error("option " + s + " needs a value");
        value = argv[++i];
      }
      if (a.values.count(s)) throw usage_error("option " + s + " given twice");
      a.values[s] = value;
    } else {
      throw usage_error("unknown option '" + s + "'");
    }
  }
  return a;
}

int64_t parse_integer(const std::string& s, const std::string& what) {
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != s.size()) throw usage_error(what + " must be an integer, got '" + s + "'");
  return v;
}

std::regex parse_regex(const std::string& s, const std::string& what) {
  try {
    return std::regex(s, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw usage_error(what + " is not a valid regular expression ('" + s + "'): " + e.what());
  }
}

dtype parse_output_dtype(const std::string& s) {
  if (s == "bf16" || s == "bfloat16") return dtype::bf16;
  if (s == "fp16" || s == "f16" || s == "float16") return dtype::f16;
  if (s == "fp32" || s == "f32" || s == "float32") return dtype::f32;
  throw usage_error("--dtype must be bf16, fp16 or fp32, got '" + s + "'");
}

// ---- inspect -----------------------------------------------------------------------

void run_inspect(const std::string& path) {
  const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(path);
  const std::vector<lowbit::quantized_weight_info> groups = lowbit::find_quantized_weights(r);
  std::map<std::string, const lowbit::quantized_weight_info*> by_name;
  std::set<std::string> grouped;
  for (const auto& g : groups) {
    by_name[g.name] = &g;
    grouped.insert(g.keys.begin(), g.keys.end());
  }
  struct row {
    std::string name, type, shape, bytes, bits;
  };
  std::vector<row> rows;
  std::size_t total_bytes = 0;
  int64_t total_params = 0, quant_params = 0;
  std::size_t quant_bytes = 0;
  char bits[32];
  for (const auto& t : r.tensors()) {
    auto g = by_name.find(t.name);
    if (g != by_name.end()) {
      const auto& q = *g->second;
      const int64_t n = q.numel();
      std::snprintf(bits, sizeof bits, "%.3f", n ? 8.0 * double(q.total_bytes) / double(n) : 0.0);
      rows.push_back({q.name, layout_label(q.fmt, q.block_size, q.nested) + " (" +
                                  lowbit::dtype_name(q.original_dtype) + ")",
                      bracket_shape(q.shape), std::to_string(q.total_bytes), bits});
      add_to_total(total_bytes, q.total_bytes, path + ": the total of tensor bytes");
      add_to_total(total_params, n, path + ": the total parameter count");
      add_to_total(quant_params, n, path + ": the quantized parameter count");
      add_to_total(quant_bytes, q.total_bytes, path + ": the total of quantized bytes");
      continue;
    }
    if (grouped.count(t.name)) continue;
    std::snprintf(bits, sizeof bits, "%.3f", 8.0 * double(lowbit::dtype_size(t.type)));
    rows.push_back({t.name, t.dtype_string, bracket_shape(t.shape), std::to_string(t.nbytes), bits});
    add_to_total(total_bytes, t.nbytes, path + ": the total of tensor bytes");
    add_to_total(total_params, t.numel(), path + ": the total parameter count");
  }
  std::size_t w[4] = {4, 4, 5, 5};
  for (const row& x : rows) {
    w[0] = std::max(w[0], x.name.size());
    w[1] = std::max(w[1], x.type.size());
    w[2] = std::max(w[2], x.shape.size());
    w[3] = std::max(w[3], x.bytes.size());
  }
  std::printf("%s: %zu bytes, header %zu bytes, %zu tensors, %zu quantized weights\n", path.c_str(), r.file_size(),
              r.header_size(), r.tensors().size(), groups.size());
  std::printf("%-*s  %-*s  %-*s  %*s  %s\n", int(w[0]), "name", int(w[1]), "type", int(w[2]), "shape", int(w[3]),
              "bytes", "bits/param");
  for (const row& x : rows)
    std::printf("%-*s  %-*s  %-*s  %*s  %10s\n", int(w[0]), x.name.c_str(), int(w[1]), x.type.c_str(), int(w[2]),
                x.shape.c_str(), int(w[3]), x.bytes.c_str(), x.bits.c_str());
  std::printf("total: %lld parameters, %zu bytes of tensor data (%s), %.3f bits/param\n", (long long)total_params,
              total_bytes, human_bytes(double(total_bytes)).c_str(),
              total_params ? 8.0 * double(total_bytes) / double(total_params) : 0.0);
  if (quant_params)
    std::printf("quantized weights: %lld parameters in %zu bytes, %.3f bits/param (all their keys)\n",
                (long long)quant_params, quant_bytes, 8.0 * double(quant_bytes) / double(quant_params));
  for (const auto& kv : r.metadata()) std::printf("metadata: %s = %s\n", kv.first.c_str(), kv.second.c_str());
}

// ---- quantize -----------------------------------------------------------------------

struct quantize_options {
  format fmt = format::nf4;
  int block_size = 64;
  bool nested = false;
  bool has_include = false, has_exclude = false;
  std::regex include, exclude;
};

struct quantize_result {
  std::string name;
  std::vector<int64_t> shape;
  std::size_t bytes_before = 0, bytes_after = 0;
  double rel_error = 0.0;
};

struct quantize_summary {
  std::vector<quantize_result> tensors;
  std::size_t copied = 0;
  std::size_t file_before = 0, file_after = 0;
};

// Never a scalar: a quantized weight's logical shape has rank >= 1 (it would
// come back from dequantize as [1]).
bool selected_for_quantization(const lowbit::safetensors_tensor& t, const quantize_options& o) {
  static const std::regex default_skip("embed|norm|lm_head");
  if (!quantizable_dtype(t.type) || t.shape.empty() || t.numel() == 0) return false;
  const bool chosen = o.has_include ? std::regex_search(t.name, o.include)
                                    : (t.shape.size() == 2 && !std::regex_search(t.name, default_skip));
  return chosen && !(o.has_exclude && std::regex_search(t.name, o.exclude));
}

quantize_summary run_quantize(const std::string& in, const std::string& out, const quantize_options& o) {
  const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(in);
  std::set<std::string> already;  // keys of weights that are quantized already
  for (const auto& g : lowbit::find_quantized_weights(r)) already.insert(g.keys.begin(), g.keys.end());
  std::vector<const lowbit::safetensors_tensor*> chosen;
  for (const auto& t : r.tensors())
    if (!already.count(t.name) && selected_for_quantization(t, o)) chosen.push_back(&t);

  lowbit::safetensors_writer w;
  for (const auto& kv : r.metadata()) w.set_metadata(kv.first, kv.second);
  std::deque<lowbit::quantized_tensor> store;  // the writer borrows these until it has written
  quantize_summary sum;
  sum.file_before = r.file_size();
  std::size_t next = 0;
  for (const auto& t : r.tensors()) {
    if (next >= chosen.size() || chosen[next] != &t) {
      w.add(t.name, t.type, t.shape, t.data);
      ++sum.copied;
      continue;
    }
    ++next;
    const int64_t n = t.numel();
    const lowbit::blockwise_layout layout = lowbit::make_layout(o.fmt, n, o.block_size, o.nested);
    store.emplace_back(layout, t.shape);
    lowbit::quantized_tensor& q = store.back();
    const std::vector<float> x = to_floats(t);
    std::vector<float> y(x.size());
    try {
      // Quantize from the stored dtype (a flat view; copied when unaligned).
      std::vector<uint8_t> aligned;
      const void* src = t.data;
      if (!t.is_aligned()) {
        aligned.assign(t.data, t.data + t.nbytes);
        src = aligned.data();
      }
      lowbit::cpu::quantize(lowbit::make_view(const_cast<void*>(src), t.type, {n}), q.view());
      lowbit::cpu::dequantize(q.view(), lowbit::make_flat_view(y.data(), n));
    } catch (const lowbit::error& e) {
      throw lowbit::error(e.code(), in + ": tensor '" + t.name + "': " + bare_message(e));
    }
    lowbit::save_quantized(w, t.name, q, t.type);
    quantize_result res;
    res.name = t.name;
    res.shape = t.shape;
    res.bytes_before = t.nbytes;
    res.bytes_after = std::size_t(layout.total_bytes());
    res.rel_error = relative_error(x, y);
    std::printf("[%zu/%zu] %s %s %s  %s -> %s (%.3f bits/param)  rel.err %.4f\n", next, chosen.size(),
                t.name.c_str(), dims_string(t.shape, "x").c_str(),
                layout_label(o.fmt, o.block_size, o.nested).c_str(), human_bytes(double(res.bytes_before)).c_str(),
                human_bytes(double(res.bytes_after)).c_str(), layout.bits_per_param(), res.rel_error);
    std::fflush(stdout);
    sum.tensors.push_back(res);
  }
  w.write(out);
  sum.file_after = w.file_size();

  std::printf("quantized %zu tensors to %s, copied %zu unchanged; wrote %s\n", sum.tensors.size(),
              layout_label(o.fmt, o.block_size, o.nested).c_str(), sum.copied, out.c_str());
  std::printf("file size: %zu -> %zu bytes (%s -> %s)\n", sum.file_before, sum.file_after,
              human_bytes(double(sum.file_before)).c_str(), human_bytes(double(sum.file_after)).c_str());
  if (!sum.tensors.empty()) {
    double mean = 0.0;
    const quantize_result* worst = &sum.tensors[0];
    std::size_t before = 0, after = 0;
    for (const auto& q : sum.tensors) {
      mean += q.rel_error;
      if (q.rel_error > worst->rel_error) worst = &q;
      before += q.bytes_before;
      after += q.bytes_after;
    }
    mean /= double(sum.tensors.size());
    std::printf("quantized tensors: %zu -> %zu bytes of codes and scales\n", before, after);
    std::printf("relative error ||w - deq(q(w))||_2 / ||w||_2: mean %.4f, max %.4f (%s)\n", mean, worst->rel_error,
                worst->name.c_str());
  } else {
    std::printf("no tensor matched the selection; the output is a copy of the input\n");
  }
  return sum;
}

// ---- dequantize ---------------------------------------------------------------------

struct dequantize_summary {
  std::size_t dequantized = 0, copied = 0, file_before = 0, file_after = 0;
};

dequantize_summary run_dequantize(const std::string& in, const std::string& out, bool has_dtype, dtype out_dtype) {
  const lowbit::safetensors_reader r = lowbit::safetensors_reader::open(in);
  const std::vector<lowbit::quantized_weight_info> groups = lowbit::find_quantized_weights(r);
  std::map<std::string, const lowbit::quantized_weight_info*> by_name;
  std::set<std::string> grouped;
  for (const auto& g : groups) {
    by_name[g.name] = &g;
    grouped.insert(g.keys.begin(), g.keys.end());
  }
  lowbit::safetensors_writer w;
  for (const auto& kv : r.metadata()) w.set_metadata(kv.first, kv.second);
  dequantize_summary sum;
  sum.file_before = r.file_size();
  std::size_t index = 0;
  const std::size_t count = groups.size();
  for (const auto& t : r.tensors()) {
    auto it = by_name.find(t.name);
    if (it != by_name.end()) {
      const lowbit::quantized_weight_info& g = *it->second;
      const dtype d = has_dtype ? out_dtype : g.original_dtype;
      const std::size_t i = ++index;
      w.add_generated(g.name, d, g.shape, [&r, &g, &in, d, i, count](uint8_t* dst, std::size_t) {
        try {
          lowbit::loaded_quantized lq = lowbit::load_quantized(r, g.name);
          lowbit::cpu::dequantize(lq.tensor.view(), lowbit::make_view(static_cast<void*>(dst), d, {lq.tensor.layout.n}));
        } catch (const lowbit::error& e) {
          throw lowbit::error(e.code(), in + ": weight '" + g.name + "': " + bare_message(e));
        }
        std::printf("[%zu/%zu] %s %s %s -> %s\n", i, count, g.name.c_str(), dims_string(g.shape, "x").c_str(),
                    layout_label(g.fmt, g.block_size, g.nested).c_str(), lowbit::dtype_name(d));
        std::fflush(stdout);
      });
      ++sum.dequantized;
    } else if (!grouped.count(t.name)) {
      w.add(t.name, t.type, t.shape, t.data);
      ++sum.copied;
    }
  }
  w.write(out);
  sum.file_after = w.file_size();
  std::printf("dequantized %zu weights, copied %zu tensors unchanged; wrote %s\n", sum.dequantized, sum.copied,
              out.c_str());
  std::printf("file size: %zu -> %zu bytes (%s -> %s)\n", sum.file_before, sum.file_after,
              human_bytes(double(sum.file_before)).c_str(), human_bytes(double(sum.file_after)).c_str());
  if (groups.empty()) std::printf("note: %s holds no quantized weights; the output is a copy\n", in.c_str());
  return sum;
}

// ---- demo ---------------------------------------------------------------------------

void run_demo(const std::string& dir) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string model = dir + "/lowbit-demo.safetensors";
  const std::string quant = dir + "/lowbit-demo-nf4.safetensors";
  const std::string deq = dir + "/lowbit-demo-dequantized.safetensors";

  // A two-layer LLaMA-shaped model: vocab 512, hidden 256, MLP 688, bf16.
  const int64_t vocab = 512, hidden = 256, mlp = 688;
  std::mt19937_64 rng(20240601);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::deque<std::vector<lowbit::bf16>> buffers;
  lowbit::safetensors_writer w;
  w.set_metadata("format", "pt");
  w.set_metadata("lowbit_demo", "random weights");
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float bias) {
    buffers.emplace_back(std::size_t(product(shape)));
    for (auto& v : buffers.back()) {
      float x = bias + scale * normal(rng);
      if ((rng() & 1023) == 0) x *= 8.0f;  // a few outliers, as real weights have
      v = lowbit::to_bf16(x);
    }
    w.add(name, dtype::bf16, std::move(shape), buffers.back().data());
  };
  add("model.embed_tokens.weight", {vocab, hidden}, 0.02f, 0.0f);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {hidden}, 0.05f, 1.0f);
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"})
      add(p + "self_attn." + m + ".weight", {hidden, hidden}, 0.02f, 0.0f);
    add(p + "post_attention_layernorm.weight", {hidden}, 0.05f, 1.0f);
    add(p + "mlp.gate_proj.weight", {mlp, hidden}, 0.02f, 0.0f);
    add(p + "mlp.up_proj.weight", {mlp, hidden}, 0.02f, 0.0f);
    add(p + "mlp.down_proj.weight", {hidden, mlp}, 0.02f, 0.0f);
  }
  add("model.norm.weight", {hidden}, 0.05f, 1.0f);
  add("lm_head.weight", {vocab, hidden}, 0.02f, 0.0f);
  w.write(model);
  std::printf("== lowbit demo: wrote %s (%zu tensors)\n\n== lowbit quantize %s %s --format nf4 --double-quant\n",
              model.c_str(), w.size(), model.c_str(), quant.c_str());

  quantize_options o;
  o.fmt = format::nf4;
  o.block_size = 64;
  o.nested = true;
  const quantize_summary qs = run_quantize(model, quant, o);
  std::printf("\n== lowbit inspect %s\n", quant.c_str());
  run_inspect(quant);
  std::printf("\n== lowbit dequantize %s %s\n", quant.c_str(), deq.c_str());
  const dequantize_summary ds = run_dequantize(quant, deq, false, dtype::bf16);

  // Results: compare the dequantized file with the original, tensor by tensor.
  const auto orig = lowbit::safetensors_reader::open(model);
  const auto back = lowbit::safetensors_reader::open(deq);
  const auto qfile = lowbit::safetensors_reader::open(quant);
  std::map<std::string, lowbit::quantized_weight_info> qinfo;
  for (const auto& g : lowbit::find_quantized_weights(qfile)) qinfo[g.name] = g;
  int width = 6;
  for (const auto& t : orig.tensors()) width = std::max(width, int(t.name.size()));
  std::printf("\n== results (original bf16 vs dequantized bf16; bits/param count all of a weight's keys)\n"
              "%-*s  %-10s %-14s %10s %10s\n",
              width, "tensor", "shape", "stored as", "bits/param", "rel.err");
  double sum_err = 0.0, max_err = 0.0;
  for (const auto& t : orig.tensors()) {
    const auto& b = back.at(t.name);
    const double err = relative_error(to_floats(t), to_floats(b));
    auto q = qinfo.find(t.name);
    const bool quantized = q != qinfo.end();
    const double bits = quantized ? 8.0 * double(q->second.total_bytes) / double(t.numel()) : 16.0;
    std::printf("%-*s  %-10s %-14s %10.3f %10.4f\n", width, t.name.c_str(), dims_string(t.shape, "x").c_str(),
                quantized ? layout_label(q->second.fmt, q->second.block_size, q->second.nested).c_str() : "bf16",
                bits, err);
    if (quantized) {
      sum_err += err;
      max_err = std::max(max_err, err);
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\nfiles: original %s, nf4+dq %s, dequantized %s\n", human_bytes(double(qs.file_before)).c_str(),
              human_bytes(double(qs.file_after)).c_str(), human_bytes(double(ds.file_after)).c_str());
  std::printf("%zu weights quantized: mean rel.err %.4f, max %.4f; %zu tensors copied exactly; %.2f s\n",
              qs.tensors.size(), qs.tensors.empty() ? 0.0 : sum_err / double(qs.tensors.size()), max_err, qs.copied,
              secs);
}

// ---- main ---------------------------------------------------------------------------

int command(int argc, char** argv) {
  const std::string cmd = argv[1];
  if (cmd == "inspect") {
    const parsed_args a = parse_args(argc, argv, 2, {}, {});
    if (a.help) return std::fputs(inspect_usage, stdout), 0;
    if (a.positional.size() != 1) throw usage_error("inspect takes exactly one file");
    run_inspect(a.positional[0]);
    return 0;
  }
  if (cmd == "quantize") {
    const parsed_args a =
        parse_args(argc, argv, 2, {"--format", "--blocksize", "--include", "--exclude"}, {"--double-quant"});
    if (a.help) return std::fputs(quantize_usage, stdout), 0;
    if (a.positional.size() != 2) throw usage_error("quantize takes IN and OUT");
    auto f = a.values.find("--format");
    if (f == a.values.end()) throw usage_error("--format is required (nf4, fp4, int4 or int8)");
    quantize_options o;
    if (f->second == "nf4") o.fmt = format::nf4;
    else if (f->second == "fp4") o.fmt = format::fp4;
    else if (f->second == "int4") o.fmt = format::int4;
    else if (f->second == "int8") o.fmt = format::int8;
    else throw usage_error("--format must be nf4, fp4, int4 or int8, got '" + f->second + "'");
    if (auto b = a.values.find("--blocksize"); b != a.values.end()) {
      const int64_t bs = parse_integer(b->second, "--blocksize");
      if (!lowbit::is_valid_block_size(bs))
        throw usage_error("--blocksize " + b->second + " is not a power of two in [32, 4096]");
      o.block_size = int(bs);
    }
    o.nested = a.flags.count("--double-quant") != 0;
    if (auto i = a.values.find("--include"); i != a.values.end()) {
      o.include = parse_regex(i->second, "--include");
      o.has_include = true;
    }
    if (auto e = a.values.find("--exclude"); e != a.values.end()) {
      o.exclude = parse_regex(e->second, "--exclude");
      o.has_exclude = true;
    }
    run_quantize(a.positional[0], a.positional[1], o);
    return 0;
  }
  if (cmd == "dequantize") {
    const parsed_args a = parse_args(argc, argv, 2, {"--dtype"}, {});
    if (a.help) return std::fputs(dequantize_usage, stdout), 0;
    if (a.positional.size() != 2) throw usage_error("dequantize takes IN and OUT");
    auto d = a.values.find("--dtype");
    run_dequantize(a.positional[0], a.positional[1], d != a.values.end(),
                   d != a.values.end() ? parse_output_dtype(d->second) : dtype::bf16);
    return 0;
  }
  if (cmd == "demo") {
    const parsed_args a = parse_args(argc, argv, 2, {}, {});
    if (a.help) return std::fputs(demo_usage, stdout), 0;
    if (a.positional.size() > 1) throw usage_error("demo takes at most one directory");
    run_demo(a.positional.empty() ? std::string("/tmp") : a.positional[0]);
    return 0;
  }
  if (cmd == "--help" || cmd == "-h" || cmd == "help") return std::fputs(main_usage, stdout), 0;
  if (cmd == "--version")
    return std::printf("lowbit %d.%d.%d\n", LOWBIT_VERSION_MAJOR, LOWBIT_VERSION_MINOR, LOWBIT_VERSION_PATCH), 0;
  throw usage_error("unknown command '" + cmd + "'");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(main_usage, stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    return command(argc, argv);
  } catch (const usage_error& e) {
    const bool known = cmd == "inspect" || cmd == "quantize" || cmd == "dequantize" || cmd == "demo";
    const std::string who = known ? "lowbit " + cmd : std::string("lowbit");
    std::fprintf(stderr, "%s: %s\n(see '%s --help')\n", who.c_str(), e.what(), who.c_str());
    return 2;
  } catch (const lowbit::error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lowbit %s: %s\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lowbit %s: unexpected error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
