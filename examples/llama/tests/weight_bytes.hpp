// examples/llama/tests/weight_bytes.hpp
// Every stored byte of a weight_store (gains, dense matrices, quantized
// codes and scales) as one string, so tests can compare two runs' weights
// bit for bit.
#pragma once

#include <string>

#include "../parameters.hpp"

namespace llama {

inline std::string store_bytes(const weight_store<float>& w) {
  std::string out(reinterpret_cast<const char*>(w.vectors.data()), w.vectors.size() * 4);
  out.append(reinterpret_cast<const char*>(w.m32.data()), w.m32.size() * 4);
  out.append(reinterpret_cast<const char*>(w.m16.data()), w.m16.size() * 2);
  for (const auto& q : w.mq) {
    out.append(reinterpret_cast<const char*>(q.codes.data()), q.codes.size());
    out.append(reinterpret_cast<const char*>(q.absmax.data()), q.absmax.size() * 4);
    out.append(reinterpret_cast<const char*>(q.absmax_codes.data()), q.absmax_codes.size());
    out.append(reinterpret_cast<const char*>(q.nested_absmax.data()), q.nested_absmax.size() * 4);
    out.append(reinterpret_cast<const char*>(&q.nested_offset), 4);
  }
  return out;
}

}  // namespace llama
