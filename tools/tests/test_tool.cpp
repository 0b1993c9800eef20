// tools/tests/test_tool.cpp
// Cases of the `lowbit` tool that need crafted files (tool_e2e.cmake covers
// the ordinary runs): each test writes its input with lowbit/io (or byte by
// byte), runs the built tool (its path is compiled in as LOWBIT_TOOL) and
// checks the exit status, the messages and the files it wrote. Malformed
// input must end in exit status 1 with "malformed file" on stderr, never in
// a crash or in totals computed from numbers the file made up.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <lowbit/io/io.hpp>

#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#ifndef LOWBIT_TOOL
#error "compile with -DLOWBIT_TOOL=\"path/to/lowbit\""
#endif

using lowbit::dtype;

namespace {

// A fresh directory, removed with its contents.
struct scratch_dir {
  std::filesystem::path path;
  scratch_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "lowbit-tool-test-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

struct run_result {
  bool exited = false;  // false: killed by a signal (a crash)
  int status = -1;
  std::string out, err;
};

// Runs `lowbit <args>` (arguments are paths and words without quotes).
// `exec`: the shell becomes the tool, so a crash shows as a signal.
run_result run_tool(const scratch_dir& dir, const std::string& args) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string cmd = std::string("exec '") + LOWBIT_TOOL + "' " + args + " >'" + out + "' 2>'" + err + "'";
  const int rc = std::system(cmd.c_str());
  run_result r;
  r.exited = rc != -1 && WIFEXITED(rc);
  r.status = r.exited ? WEXITSTATUS(rc) : -1;
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<uint8_t> float_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// A 4-element NF4 weight `name` (2 code bytes, 1 scale) whose quant_state
// claims `shape`, under the key suffix of `quant_type`.
void add_crafted_weight(lowbit::safetensors_writer& w, const std::string& name, const std::string& shape,
                        const std::string& quant_type = "nf4") {
  w.add_owned(name, dtype::u8, {2, 1}, {0xf0, 0x7f});
  w.add_owned(name + ".absmax", dtype::f32, {1}, float_bytes({2.0f}));
  w.add_owned(name + ".quant_map", dtype::f32, {16}, float_bytes(lowbit::stored_quant_map(lowbit::format::nf4)));
  const std::string js = "{\"quant_type\": \"" + quant_type + "\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": " +
                         shape + "}";
  w.add_owned(name + ".quant_state.bitsandbytes__" + quant_type, dtype::u8, {int64_t(js.size())},
              std::vector<uint8_t>(js.begin(), js.end()));
}

void expect_malformed(const run_result& r, const std::string& part) {
  CHECK_MESSAGE(r.exited, "the tool was killed by a signal");
  CHECK(r.status == 1);
  CHECK_MESSAGE(contains(r.err, "malformed file"), r.err);
  CHECK_MESSAGE(contains(r.err, part), r.err);
}

}  // namespace

// A rank-0 tensor has no quantized form that keeps its rank (a quantized
// weight's shape comes back as [1]), so the tool copies scalars even when
// --include names them, and dequantize gives them back as they were.
TEST_CASE("tool: quantize leaves scalars as they are, even when --include matches them") {
  scratch_dir dir;
  const std::string in = dir.file("in.safetensors"), q = dir.file("q.safetensors"), d = dir.file("d.safetensors");
  std::vector<float> m(128);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = 0.01f * float(i);
  lowbit::safetensors_writer w;
  w.add_owned("s", dtype::f32, {}, float_bytes({0.75f}));
  w.add_owned("m", dtype::f32, {2, 64}, float_bytes(m));
  w.write(in);

  const run_result rq = run_tool(dir, "quantize " + in + " " + q + " --format nf4 --include .");
  REQUIRE_MESSAGE(rq.status == 0, rq.err);
  CHECK(contains(rq.out, "quantized 1 tensors"));
  CHECK(contains(rq.out, "copied 1 unchanged"));
  const auto rqf = lowbit::safetensors_reader::open(q);
  CHECK(rqf.at("s").shape.empty());
  CHECK(rqf.at("s").to_vector<float>() == std::vector<float>{0.75f});
  CHECK_FALSE(rqf.contains("s.quant_state.bitsandbytes__nf4"));
  CHECK(rqf.contains("m.quant_state.bitsandbytes__nf4"));

  const run_result rd = run_tool(dir, "dequantize " + q + " " + d);
  REQUIRE_MESSAGE(rd.status == 0, rd.err);
  const auto rdf = lowbit::safetensors_reader::open(d);
  CHECK(rdf.at("s").shape.empty());
  CHECK(rdf.at("s").to_vector<float>() == std::vector<float>{0.75f});
  CHECK(rdf.at("m").shape == std::vector<int64_t>{2, 64});

  CHECK(contains(run_tool(dir, "quantize --help").out, "any rank but 0"));
}

TEST_CASE("tool: a weight with two quant_state keys is a malformed file") {
  scratch_dir dir;
  const std::string in = dir.file("two.safetensors");
  lowbit::safetensors_writer w;
  add_crafted_weight(w, "w", "[4]", "nf4");
  const std::string js = "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4]}";
  w.add_owned("w.quant_state.bitsandbytes__fp4", dtype::u8, {int64_t(js.size())},
              std::vector<uint8_t>(js.begin(), js.end()));
  w.write(in);
  expect_malformed(run_tool(dir, "inspect " + in), "weight 'w' has two quant_state keys");
  expect_malformed(run_tool(dir, "dequantize " + in + " " + dir.file("out.safetensors")), "two quant_state keys");
  CHECK_FALSE(std::filesystem::exists(dir.file("out.safetensors")));
}

// inspect summed the element counts quant_states claimed: two 2-byte
// weights claiming INT64_MAX elements each made the total overflow. Such
// claims are refused now, before anything is summed.
TEST_CASE("tool: inspect refuses element counts the file's data cannot hold") {
  scratch_dir dir;
  const std::string huge = dir.file("huge.safetensors"), big = dir.file("big.safetensors");
  lowbit::safetensors_writer w;
  add_crafted_weight(w, "a", "[9223372036854775807]");
  add_crafted_weight(w, "b", "[9223372036854775807]");
  w.write(huge);
  expect_malformed(run_tool(dir, "inspect " + huge), "more than lowbit's layouts hold");
  lowbit::safetensors_writer w2;
  add_crafted_weight(w2, "w", "[268435456]");
  w2.write(big);
  expect_malformed(run_tool(dir, "inspect " + big), "'w' holds 2 code bytes");
  expect_malformed(run_tool(dir, "dequantize " + big + " " + dir.file("out.safetensors")), "'w' holds 2 code bytes");
  lowbit::safetensors_writer ok;
  add_crafted_weight(ok, "w", "[2, 2]");
  ok.write(big);
  const run_result r = run_tool(dir, "inspect " + big);
  CHECK_MESSAGE(r.status == 0, r.err);
  CHECK(contains(r.out, "total: 4 parameters"));
}

// nlohmann's dump() recurses once per nesting level: a 2 MB header nested a
// million deep crashed the tool (stack overflow) while it built the message.
TEST_CASE("tool: a deeply nested header is a malformed file, not a crash") {
  scratch_dir dir;
  const std::string path = dir.file("deep.safetensors");
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  const std::string header = "{\"t\":{\"dtype\":\"U8\",\"shape\":[" + deep + "],\"data_offsets\":[0,0]}}";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[std::size_t(i)] = char(uint64_t(header.size()) >> (8 * i));
  std::ofstream(path, std::ios::binary) << file << header;
  expect_malformed(run_tool(dir, "inspect " + path), "shape entries must be non-negative integers");
}
