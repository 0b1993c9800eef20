// lowbit/io/safetensors.hpp
// Reading and writing the safetensors container (host only). The reader
// memory-maps a file read-only (or parses a caller's memory buffer) and checks
// everything FORMATS.md lists before handing out a single pointer: the 8-byte
// little-endian header length against the file size and a 100 MB cap, UTF-8
// and JSON well-formedness, the type of every entry and field, known dtypes,
// shapes whose extents (zeros aside) and byte size overflow nothing, so that
// every tensor's row-major strides fit int64 too, and data_offsets
// that, sorted, tile the data section exactly (in range, ordered, no overlap,
// no gap, no trailing bytes). Any violation is a lowbit::error with
// errc::malformed_file naming the source and the tensor or field; the reader
// never crashes on any input (a libFuzzer target checks this). The writer
// collects named tensors (borrowed bytes, owned bytes, or a callback that
// fills them when written) plus __metadata__, and writes header + data in
// insertion order to a temporary file of its own next to `path` (created
// with O_EXCL, so two writers never share one), fsyncs and renames it over
// `path`, so an interrupted or failed write leaves any old file intact.
// Error messages never dump() JSON values from a file (json_excerpt says
// why); io/bnb_quant_state.hpp and io/optimizer_state.hpp use the same
// helpers.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/view.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "lowbit's safetensors I/O assumes a little-endian host");
#endif

namespace lowbit {

// Largest JSON header the reader accepts (the reference implementation's cap).
constexpr std::uint64_t safetensors_max_header_bytes = 100000000;

// The safetensors dtype string of a lowbit dtype ("F32", "BF16", ...).
inline const char* safetensors_dtype_string(dtype t) {
  switch (t) {
    case dtype::f64: return "F64";
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::i64: return "I64";
    case dtype::i32: return "I32";
    case dtype::i16: return "I16";
    case dtype::i8: return "I8";
    case dtype::u8: return "U8";
    case dtype::boolean: return "BOOL";
  }
  return "?";
}

// Parses a safetensors dtype string. Strings safetensors defines but lowbit
// has no dtype for (U16, U32, U64, the F8/F6/F4 variants, C64) raise
// errc::unsupported; anything else errc::malformed_file. `what` names the
// tensor for the message.
inline dtype parse_safetensors_dtype(const std::string& s, const std::string& what) {
  static const char* const known[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
  static const dtype types[] = {dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::i64,
                                dtype::i32, dtype::i16, dtype::i8,  dtype::u8,   dtype::boolean};
  for (int i = 0; i < 10; ++i)
    if (s == known[i]) return types[i];
  static const char* const unsupported[] = {"U16",     "U32",     "U64",         "F8_E4M3", "F8_E5M2",
                                            "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "E8M0",    "F6_E2M3",
                                            "F6_E3M2", "F4",      "C64"};
  for (const char* u : unsupported)
    if (s == u)
      throw error(errc::unsupported, what + ": unsupported dtype '" + s +
                                         "' (lowbit reads F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  throw error(errc::malformed_file, what + ": unknown dtype '" + s + "'");
}

namespace io_detail {

// Offset of the first byte that breaks UTF-8 (overlong forms, surrogates and
// code points above U+10FFFF included), or `n` when the text is valid.
inline std::size_t utf8_error_offset(const unsigned char* s, std::size_t n) {
  std::size_t i = 0;
  while (i < n) {
    const unsigned c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else return i;
    if (n - i < len) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    i += len;
  }
  return n;
}

inline bool is_utf8(const std::string& s) {
  return utf8_error_offset(reinterpret_cast<const unsigned char*>(s.data()), s.size()) == s.size();
}

// a * b into out; false on overflow of the signed 64-bit range.
inline bool mul_checked(int64_t a, int64_t b, int64_t& out) {
  if (a < 0 || b < 0) return false;
  if (a != 0 && b > INT64_MAX / a) return false;
  out = a * b;
  return true;
}

// A non-negative JSON integer that fits int64, or -1.
inline int64_t json_nonneg_int(const nlohmann::json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    return u <= std::uint64_t(INT64_MAX) ? int64_t(u) : -1;
  }
  if (v.is_number_integer()) {
    const auto s = v.get<std::int64_t>();
    return s >= 0 ? s : -1;
  }
  return -1;
}

// What an error message shows of a JSON value read from a file: a number,
// boolean or null as written, a string quoted and cut to max_chars, an array
// or object by kind and size only. Never dump() such a value: dump recurses
// once per level of nesting (a 2 MB header nests a million deep and overflows
// the stack) and copies the whole value into the message.
inline std::string json_excerpt(const nlohmann::json& v, std::size_t max_chars = 40) {
  const std::string size = std::to_string(v.size());
  if (v.is_array()) return "an array of " + size + (v.size() == 1 ? " element" : " elements");
  if (v.is_object()) return "an object of " + size + (v.size() == 1 ? " member" : " members");
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    const bool cut = s.size() > max_chars;
    // `replace`: a cut may split a UTF-8 sequence, which dump() would refuse
    return nlohmann::json(cut ? s.substr(0, max_chars) : s)
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
           (cut ? "..." : "");
  }
  return v.dump();  // a number, boolean or null: one short token
}

// Parses JSON text from a file. Invalid JSON is errc::malformed_file "<what>
// is not valid JSON: <reason>", the reason cut to 200 characters (nlohmann
// quotes the token it stopped at, which can be the rest of the file).
// nlohmann parses iteratively: nesting depth costs heap, not stack.
inline nlohmann::json parse_json(const uint8_t* first, const uint8_t* last, const std::string& what) {
  try {
    return nlohmann::json::parse(first, last);
  } catch (const nlohmann::json::exception& e) {
    std::string reason = e.what();
    if (reason.size() > 200) reason = reason.substr(0, 200) + "...";
    throw error(errc::malformed_file, what + " is not valid JSON: " + reason);
  }
}

// "[2, 3]"; "[]" for a scalar.
inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

inline std::string errno_text() { return std::strerror(errno); }

// Writes all of [p, p + n) to fd, retrying short writes and EINTR.
inline bool write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const std::size_t chunk = std::min<std::size_t>(n, std::size_t(1) << 30);
    const ssize_t w = ::write(fd, c, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    c += w;
    n -= std::size_t(w);
  }
  return true;
}

// A read-only private mapping of a whole file, unmapped on destruction.
struct mapped_file {
  void* base = nullptr;
  std::size_t size = 0;
  mapped_file() = default;
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() {
    if (base) ::munmap(base, size);
  }
};

// A new temporary file next to `target_path`, closed and removed unless
// commit() renames it over the target. Its name, `target.tmp-<pid>-<n>`, is
// created with O_EXCL, so it is this writer's alone: two writers of one path
// (threads, or processes that reuse a pid) never truncate or fill each
// other's file, and a name left by a crashed writer is skipped. Mode 0644
// less the umask, as a plain open() would create.
struct temp_file {
  int fd = -1;
  std::string tmp, target;
  explicit temp_file(std::string target_path) : target(std::move(target_path)) {
    static std::atomic<unsigned long long> counter{0};
    const std::string stem = target + ".tmp-" + std::to_string(long(::getpid())) + "-";
    for (int attempt = 0; fd < 0; ++attempt) {
      tmp = stem + std::to_string(counter.fetch_add(1));
      fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0 && (errno != EEXIST || attempt == 1000)) {
        const std::string reason = errno_text();
        tmp.clear();  // not ours: never unlink it
        throw error(errc::io, "cannot create a temporary file '" + stem + "*' (for '" + target + "'): " + reason);
      }
    }
  }
  temp_file(const temp_file&) = delete;
  temp_file& operator=(const temp_file&) = delete;
  ~temp_file() {
    if (fd >= 0) ::close(fd);
    if (!tmp.empty()) ::unlink(tmp.c_str());
  }
  [[noreturn]] void fail(const std::string& what) const {
    const std::string reason = errno_text();
    throw error(errc::io, what + " '" + tmp + "' (for '" + target + "'): " + reason);
  }
  // fsync, close, rename over the target.
  void commit() {
    if (::fsync(fd) != 0) fail("cannot fsync");
    const int f = fd;
    fd = -1;
    if (::close(f) != 0) fail("cannot close");
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
      const std::string reason = errno_text();
      throw error(errc::io, "cannot rename '" + tmp + "' to '" + target + "': " + reason);
    }
    tmp.clear();
  }
};

}  // namespace io_detail

// One tensor of a safetensors file.
struct safetensors_tensor {
  std::string name;
  std::string dtype_string;      // as in the file: "F32", "BF16", ...
  dtype type = dtype::u8;
  std::vector<int64_t> shape;    // any rank; [] is a scalar
  const uint8_t* data = nullptr; // into the file's bytes; may be unaligned for `type`
  std::size_t nbytes = 0;        // == dtype_size(type) * numel()
  std::size_t offset = 0;        // data_offsets[0], relative to the data section

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;  // cannot overflow: checked when parsed (or added to a writer)
    return n;
  }
  std::string shape_string() const { return io_detail::shape_string(shape); }
  bool is_aligned() const { return reinterpret_cast<std::uintptr_t>(data) % dtype_size(type) == 0; }

  // A read-only (by contract) host view. Throws when the rank exceeds
  // lowbit::max_rank or the bytes are not aligned to the element size
  // (tensors after an odd-sized one can be); copy with to_vector then.
  tensor_view view() const {
    require(int(shape.size()) <= max_rank, errc::invalid_argument,
            "tensor '" + name + "' has rank " + std::to_string(shape.size()) + ", more than lowbit::max_rank");
    require(is_aligned(), errc::invalid_argument,
            "tensor '" + name + "' is not aligned to its " + std::to_string(dtype_size(type)) +
                "-byte element size in the file; copy it (to_vector) instead of viewing it");
    tensor_view v;
    v.data = const_cast<uint8_t*>(data);
    v.type = type;
    v.ndim = int(shape.size());
    int64_t stride = 1;  // no overflow: the reader refuses shapes whose non-zero extents pass int64
    for (int i = v.ndim - 1; i >= 0; --i) {
      v.shape[i] = shape[size_t(i)];
      v.strides[i] = stride;
      stride *= shape[size_t(i)];
    }
    return v;
  }

  // An aligned copy of the elements as T (dtype must match exactly).
  template <class T>
  std::vector<T> to_vector() const {
    require(type == dtype_of<T>::value, errc::invalid_argument,
            "tensor '" + name + "' has dtype " + dtype_string + ", expected " +
                safetensors_dtype_string(dtype_of<T>::value));
    std::vector<T> out(nbytes / sizeof(T));
    if (nbytes) std::memcpy(out.data(), data, nbytes);
    return out;
  }
};

class safetensors_reader {
 public:
  // Memory-maps `path` read-only and validates it. The mapping lives as long
  // as any copy of the reader, so tensor pointers stay valid that long.
  static safetensors_reader open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw error(errc::io, "cannot open '" + path + "': " + io_detail::errno_text());
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const std::string msg = io_detail::errno_text();
      ::close(fd);
      throw error(errc::io, "cannot stat '" + path + "': " + msg);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw error(errc::io, "'" + path + "' is not a regular file");
    }
    auto map = std::make_shared<io_detail::mapped_file>();
    map->size = std::size_t(st.st_size);
    if (map->size >= 8) {
      void* p = ::mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const std::string msg = io_detail::errno_text();
        ::close(fd);
        throw error(errc::io, "cannot map '" + path + "': " + msg);
      }
      map->base = p;
    }
    ::close(fd);
    safetensors_reader r;
    r.source_ = path;
    r.keepalive_ = map;
    r.parse_bytes(static_cast<const uint8_t*>(map->base), map->size);
    return r;
  }

  // Parses a complete file image held in memory. Does not copy: `bytes` must
  // outlive the reader and every pointer it hands out. `source_name` is used
  // in error messages.
  static safetensors_reader parse(const void* bytes, std::size_t size, std::string source_name = "<memory>") {
    safetensors_reader r;
    r.source_ = std::move(source_name);
    r.parse_bytes(static_cast<const uint8_t*>(bytes), size);
    return r;
  }

  // One reader over the tensors of several readers (the shards of one
  // checkpoint): every tensor of every part, each still pointing into its
  // own file, whose mapping the result keeps alive; a tensor's offset is
  // within its own file's data section, and file_size / header_size are
  // the parts' sums. A name held by two parts is errc::malformed_file (a
  // loader could not tell which is meant). Metadata: the union; where two
  // parts give a key different values, the earlier part's.
  static safetensors_reader combine(const std::vector<safetensors_reader>& parts, std::string source_name) {
    safetensors_reader r;
    r.source_ = std::move(source_name);
    auto keep = std::make_shared<std::vector<std::shared_ptr<const void>>>();
    std::map<std::string, const std::string*> part_of;  // tensor name -> its part's source
    for (const safetensors_reader& part : parts) {
      keep->push_back(part.keepalive_);
      r.file_size_ += part.file_size_;
      r.header_size_ += part.header_size_;
      for (const safetensors_tensor& t : part.tensors_) {
        auto seen = part_of.emplace(t.name, &part.source_);
        if (!seen.second)
          r.fail("tensor '" + t.name + "' is in both '" + *seen.first->second + "' and '" + part.source_ + "'");
        r.index_[t.name] = r.tensors_.size();
        r.tensors_.push_back(t);
      }
      for (const auto& kv : part.metadata_) r.metadata_.emplace(kv.first, kv.second);
    }
    r.keepalive_ = keep;
    return r;
  }

  const std::string& source() const { return source_; }
  std::size_t file_size() const { return file_size_; }
  std::size_t header_size() const { return header_size_; }  // the JSON length N (incl. padding)
  std::size_t data_offset() const { return 8 + header_size_; }

  // All tensors, in the order of their bytes in the file.
  const std::vector<safetensors_tensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const safetensors_tensor* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  const safetensors_tensor& at(const std::string& name) const {
    const safetensors_tensor* t = find(name);
    if (!t) throw error(errc::invalid_argument, source_ + ": no tensor named '" + name + "'");
    return *t;
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const { throw error(errc::malformed_file, source_ + ": " + msg); }

  void parse_bytes(const uint8_t* p, std::size_t size) {
    using nlohmann::json;
    file_size_ = size;
    if (size < 8)
      fail("file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length field");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | p[i];
    if (n > safetensors_max_header_bytes)
      fail("header length " + std::to_string(n) + " exceeds the limit of " +
           std::to_string(safetensors_max_header_bytes) + " bytes");
    if (n > size - 8)
      fail("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
           " bytes)");
    header_size_ = std::size_t(n);
    const uint8_t* h = p + 8;
    const std::size_t bad = io_detail::utf8_error_offset(h, header_size_);
    if (bad != header_size_) fail("header is not valid UTF-8 (byte " + std::to_string(8 + bad) + " of the file)");
    // JSON never contains a raw NUL, and nlohmann's lexer would take one as
    // the end of input and ignore what follows.
    if (const void* nul = std::memchr(h, 0, header_size_))
      fail("header contains a NUL byte (byte " + std::to_string(8 + (static_cast<const uint8_t*>(nul) - h)) +
           " of the file)");

    const json j = io_detail::parse_json(h, h + header_size_, source_ + ": header");
    if (!j.is_object()) fail("header is not a JSON object");

    const std::size_t data_size = size - 8 - header_size_;
    const uint8_t* data = h + header_size_;
    tensors_.reserve(j.size());
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      const json& v = it.value();
      if (key == "__metadata__") {
        if (!v.is_object()) fail("__metadata__ is not a JSON object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) fail("__metadata__ value of '" + m.key() + "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string what = "tensor '" + key + "'";
      if (!v.is_object()) fail(what + ": entry is not a JSON object");
      auto f_dtype = v.find("dtype"), f_shape = v.find("shape"), f_offsets = v.find("data_offsets");
      if (f_dtype == v.end() || !f_dtype->is_string()) fail(what + ": missing or non-string \"dtype\"");
      if (f_shape == v.end() || !f_shape->is_array()) fail(what + ": missing or non-array \"shape\"");
      if (f_offsets == v.end() || !f_offsets->is_array() || f_offsets->size() != 2)
        fail(what + ": \"data_offsets\" must be an array of two integers");

      safetensors_tensor t;
      t.name = key;
      t.dtype_string = f_dtype->get<std::string>();
      t.type = parse_safetensors_dtype(t.dtype_string, source_ + ": " + what);
      for (const json& d : *f_shape) {
        const int64_t s = io_detail::json_nonneg_int(d);
        if (s < 0) fail(what + ": shape entries must be non-negative integers, got " + io_detail::json_excerpt(d));
        t.shape.push_back(s);
      }
      // Zeros skipped: view() computes strides from the later extents.
      const int64_t product = nonzero_extent_product(t.shape.data(), int(t.shape.size()));
      if (product < 0) fail(what + ": shape " + t.shape_string() + " overflows int64");
      const int64_t numel = t.numel();
      int64_t nbytes = 0;
      if (!io_detail::mul_checked(numel, int64_t(dtype_size(t.type)), nbytes))
        fail(what + ": shape " + t.shape_string() + " overflows (" + t.dtype_string + " bytes past int64)");
      const int64_t begin = io_detail::json_nonneg_int((*f_offsets)[0]);
      const int64_t end = io_detail::json_nonneg_int((*f_offsets)[1]);
      if (begin < 0 || end < 0) fail(what + ": data_offsets must be non-negative integers");
      if (end < begin)
        fail(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] end before they begin");
      if (std::uint64_t(end) > data_size)
        fail(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
             "] lie outside the data section of " + std::to_string(data_size) + " bytes");
      if (end - begin != nbytes)
        fail(what + ": data_offsets span " + std::to_string(end - begin) + " bytes but " + t.dtype_string + " x " +
             t.shape_string() + " needs " + std::to_string(nbytes));
      t.offset = std::size_t(begin);
      t.nbytes = std::size_t(nbytes);
      t.data = data + begin;
      tensors_.push_back(std::move(t));
    }

    // Sorted by position the tensors must tile the data section exactly.
    std::sort(tensors_.begin(), tensors_.end(), [](const safetensors_tensor& a, const safetensors_tensor& b) {
      if (a.offset != b.offset) return a.offset < b.offset;
      if (a.nbytes != b.nbytes) return a.nbytes < b.nbytes;
      return a.name < b.name;
    });
    std::size_t expect = 0;
    for (const safetensors_tensor& t : tensors_) {
      if (t.offset < expect) fail("tensor '" + t.name + "' overlaps the bytes of the tensor before it");
      if (t.offset > expect)
        fail("tensor '" + t.name + "' begins at " + std::to_string(t.offset) + " but the previous tensor ends at " +
             std::to_string(expect) + " (gap in the data section)");
      expect = t.offset + t.nbytes;
    }
    if (expect != data_size)
      fail("tensors cover " + std::to_string(expect) + " bytes but the data section holds " +
           std::to_string(data_size));
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  }

  std::string source_;
  std::shared_ptr<const void> keepalive_;
  std::size_t file_size_ = 0;
  std::size_t header_size_ = 0;
  std::vector<safetensors_tensor> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

class safetensors_writer {
 public:
  // Fills exactly `nbytes` bytes at `dst` when the file is written.
  using fill_function = std::function<void(uint8_t* dst, std::size_t nbytes)>;

  // Borrows `data` (dtype_size(t) * prod(shape) bytes): it must stay valid
  // and unchanged until write() / to_bytes() returns.
  void add(const std::string& name, dtype t, std::vector<int64_t> shape, const void* data) {
    entry e = make_entry(name, t, std::move(shape));
    require(data != nullptr || e.nbytes == 0, errc::invalid_argument, "tensor '" + name + "': null data pointer");
    e.borrowed = static_cast<const uint8_t*>(data);
    insert(std::move(e));
  }
  // Borrows a contiguous host view (same lifetime rule).
  void add(const std::string& name, const tensor_view& v) {
    require_contiguous(v, ("tensor '" + name + "'").c_str());
    require(v.dev.host_accessible(), errc::invalid_argument, "tensor '" + name + "' is not in host memory");
    add(name, v.type, std::vector<int64_t>(v.shape, v.shape + v.ndim), v.data);
  }
  // Takes ownership of `bytes`, whose size must match dtype and shape.
  void add_owned(const std::string& name, dtype t, std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
    entry e = make_entry(name, t, std::move(shape));
    require(bytes.size() == e.nbytes, errc::invalid_argument,
            "tensor '" + name + "': " + std::to_string(bytes.size()) + " bytes given, dtype x shape needs " +
                std::to_string(e.nbytes));
    e.owned = std::move(bytes);
    insert(std::move(e));
  }
  // The bytes are produced by `fill` while the file is written (so a tool can
  // stream tensors larger than it wants to hold at once). An exception thrown
  // by `fill` aborts the write and leaves the old file in place.
  void add_generated(const std::string& name, dtype t, std::vector<int64_t> shape, fill_function fill) {
    entry e = make_entry(name, t, std::move(shape));
    require(bool(fill), errc::invalid_argument, "tensor '" + name + "': empty fill function");
    e.fill = std::move(fill);
    insert(std::move(e));
  }

  void set_metadata(const std::string& key, const std::string& value) {
    require(io_detail::is_utf8(key) && io_detail::is_utf8(value), errc::invalid_argument,
            "metadata key and value must be valid UTF-8");
    metadata_[key] = value;
  }

  bool contains(const std::string& name) const { return names_.count(name) != 0; }
  std::size_t size() const { return entries_.size(); }

  // The header JSON, padded with spaces so the data starts 8-byte aligned.
  std::string header() const {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      nlohmann::ordered_json m = nlohmann::ordered_json::object();
      for (const auto& kv : metadata_) m[kv.first] = kv.second;
      j["__metadata__"] = std::move(m);
    }
    std::uint64_t offset = 0;
    for (const entry& e : entries_) {
      nlohmann::ordered_json t = nlohmann::ordered_json::object();
      t["dtype"] = safetensors_dtype_string(e.type);
      t["shape"] = e.shape;
      t["data_offsets"] = {offset, offset + e.nbytes};
      offset += e.nbytes;
      j[e.name] = std::move(t);
    }
    std::string s = j.dump();
    while ((8 + s.size()) % 8 != 0) s.push_back(' ');
    return s;
  }

  // Total bytes write() produces.
  std::size_t file_size() const {
    std::size_t n = 8 + header().size();
    for (const entry& e : entries_) n += e.nbytes;
    return n;
  }

  // The whole file image in memory (tests, fuzz seeds, small files).
  std::vector<uint8_t> to_bytes() const {
    std::vector<uint8_t> out(file_size());
    write_to(out.data(), out.size());
    return out;
  }

  // Writes the file image into the caller's buffer, which must hold
  // file_size() bytes (errc::invalid_argument otherwise, nothing written);
  // returns the bytes written.
  std::size_t write_to(void* buffer, std::size_t capacity) const {
    const std::string h = header();
    std::size_t need = 8 + h.size();
    for (const entry& e : entries_) need += e.nbytes;
    require(buffer != nullptr || need == 0, errc::invalid_argument, "safetensors image: null buffer");
    require(capacity >= need, errc::invalid_argument,
            "safetensors image: buffer of " + std::to_string(capacity) + " bytes, the image needs " +
                std::to_string(need));
    uint8_t* out = static_cast<uint8_t*>(buffer);
    put_length(out, h.size());
    std::memcpy(out + 8, h.data(), h.size());
    std::size_t at = 8 + h.size();
    for (const entry& e : entries_) {
      std::size_t filled = 0;
      emit(e, [&](const uint8_t* p, std::size_t n) {
        std::memcpy(out + at + filled, p, n);
        filled += n;
      });
      at += e.nbytes;
    }
    return need;
  }

  // Writes the file atomically: to a new `path.tmp-<pid>-<n>`, fsync, rename
  // over `path`, fsync the directory. On any failure the temporary file is
  // removed, `path` is untouched, and lowbit::error(errc::io) names the file
  // (errors thrown by fill functions propagate unchanged).
  void write(const std::string& path) const {
    const std::string h = header();
    io_detail::temp_file out(path);
    uint8_t len[8];
    put_length(len, h.size());
    if (!io_detail::write_all(out.fd, len, 8) || !io_detail::write_all(out.fd, h.data(), h.size()))
      out.fail("cannot write");
    for (const entry& e : entries_) {
      bool ok = true;
      emit(e, [&](const uint8_t* p, std::size_t n) { ok = io_detail::write_all(out.fd, p, n); });
      if (!ok) out.fail("cannot write tensor '" + e.name + "' to");
    }
    out.commit();
    // Make the rename itself durable (best effort: some filesystems refuse).
    const std::size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  struct entry {
    std::string name;
    dtype type = dtype::u8;
    std::vector<int64_t> shape;
    std::size_t nbytes = 0;
    const uint8_t* borrowed = nullptr;
    std::vector<uint8_t> owned;
    fill_function fill;
  };

  // Validates name and shape; the entry is added by insert().
  entry make_entry(const std::string& name, dtype t, std::vector<int64_t> shape) const {
    require(io_detail::is_utf8(name), errc::invalid_argument, "tensor name is not valid UTF-8");
    require(name != "__metadata__", errc::invalid_argument, "'__metadata__' is reserved and cannot name a tensor");
    require(names_.count(name) == 0, errc::invalid_argument, "duplicate tensor name '" + name + "'");
    // The reader's rule: no negative extent, non-zero extents within int64.
    require(nonzero_extent_product(shape.data(), int(shape.size())) >= 0, errc::invalid_argument,
            "tensor '" + name + "': shape has a negative extent or overflows");
    int64_t numel = 1, nbytes = 0;
    for (int64_t s : shape) numel *= s;
    require(io_detail::mul_checked(numel, int64_t(dtype_size(t)), nbytes), errc::invalid_argument,
            "tensor '" + name + "': byte size overflows");
    entry e;
    e.name = name;
    e.type = t;
    e.shape = std::move(shape);
    e.nbytes = std::size_t(nbytes);
    return e;
  }

  void insert(entry e) {
    names_.insert(e.name);
    entries_.push_back(std::move(e));
  }

  static void put_length(uint8_t* out, std::uint64_t n) {
    for (int i = 0; i < 8; ++i) out[i] = uint8_t(n >> (8 * i));
  }

  // Calls sink(pointer, size) with the entry's bytes.
  template <class Sink>
  static void emit(const entry& e, Sink&& sink) {
    if (e.nbytes == 0) return;
    if (e.fill) {
      std::vector<uint8_t> buf(e.nbytes);
      e.fill(buf.data(), buf.size());
      sink(buf.data(), buf.size());
    } else if (e.borrowed) {
      sink(e.borrowed, e.nbytes);
    } else {
      sink(e.owned.data(), e.nbytes);
    }
  }

  std::vector<entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace lowbit
