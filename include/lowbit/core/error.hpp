// lowbit/core/error.hpp
// The single exception type of the library. Every entry point validates its
// arguments and throws lowbit::error with a code (what kind of failure) and a
// message that names the offending argument, so callers can both branch on
// the kind and show a human a useful sentence.
#pragma once

#include <stdexcept>
#include <string>

namespace lowbit {

enum class errc {
  invalid_argument,  // a size, shape, block size, dtype or pointer is wrong
  unsupported,       // a valid request this build or device cannot serve
  non_finite,        // NaN or infinity where a finite value is required
  io,                // a file could not be opened, read or written
  malformed_file,    // a file's contents violate its format
  cuda,              // the CUDA runtime reported an error
};

inline const char* errc_name(errc c) {
  switch (c) {
    case errc::invalid_argument: return "invalid argument";
    case errc::unsupported: return "unsupported";
    case errc::non_finite: return "non-finite value";
    case errc::io: return "I/O error";
    case errc::malformed_file: return "malformed file";
    case errc::cuda: return "CUDA error";
  }
  return "error";
}

class error : public std::runtime_error {
 public:
  error(errc code, const std::string& message)
      : std::runtime_error(std::string("lowbit: ") + errc_name(code) + ": " + message), code_(code) {}
  errc code() const noexcept { return code_; }

 private:
  errc code_;
};

// Throws lowbit::error(code, message) when cond is false.
inline void require(bool cond, errc code, const std::string& message) {
  if (!cond) throw error(code, message);
}

}  // namespace lowbit
