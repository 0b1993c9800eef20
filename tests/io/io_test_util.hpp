// tests/io/io_test_util.hpp
// Helpers shared by the I/O tests: run a callable and report which
// lowbit::errc (and message) it threw, a scratch directory removed at scope
// exit, whole-file reads, and raw safetensors images built from a header
// string and data bytes (so malformed files can be crafted byte by byte).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <lowbit/core/error.hpp>

namespace io_test {

struct thrown {
  bool threw = false;
  bool lowbit = false;
  lowbit::errc code = lowbit::errc::invalid_argument;
  std::string message;
};

// Runs f; records a lowbit::error (or any other exception, as lowbit == false).
template <class F>
thrown catch_error(F&& f) {
  thrown t;
  try {
    f();
  } catch (const lowbit::error& e) {
    t.threw = t.lowbit = true;
    t.code = e.code();
    t.message = e.what();
  } catch (const std::exception& e) {
    t.threw = true;
    t.message = e.what();
  }
  return t;
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A fresh directory under the system temp dir, removed with its contents.
struct scratch_dir {
  std::filesystem::path path;
  scratch_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "lowbit-io-test-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::size_t entries() const {
    return std::size_t(std::distance(std::filesystem::directory_iterator(path), std::filesystem::directory_iterator{}));
  }
};

inline std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// 8-byte little-endian `length` followed by `header` and `data`.
inline std::vector<uint8_t> raw_file(uint64_t length, const std::string& header, const std::vector<uint8_t>& data = {}) {
  std::vector<uint8_t> out;
  out.reserve(8 + header.size() + data.size());  // one allocation (and no g++ 12 -Warray-bounds false positive)
  for (int i = 0; i < 8; ++i) out.push_back(uint8_t(length >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// A file whose length field matches the header.
inline std::vector<uint8_t> raw_file(const std::string& header, const std::vector<uint8_t>& data = {}) {
  return raw_file(header.size(), header, data);
}

}  // namespace io_test
