// examples/llama/dataset.hpp
// The token corpus and its batches. A corpus is a text file (tokenized
// with the run's tokenizer) or a pre-tokenized binary file of little-endian
// uint16 or uint32 ids. The last val_fraction of the tokens is held out for
// validation. Training batches are windows at random offsets drawn from a
// counter-based generator (Philox, keyed by the seed, counted by the step
// and the row), so the data position is just the step number: a resumed run
// sees exactly the batches the uninterrupted run would have. Validation
// batches are fixed, non-overlapping windows from the start of the held-out
// part.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <lowbit/core/error.hpp>
#include <lowbit/core/rng.hpp>

#include "tokenizer.hpp"

namespace llama {

enum class corpus_format { text, u16, u32 };

inline corpus_format parse_corpus_format(const std::string& s) {
  if (s == "text") return corpus_format::text;
  if (s == "u16") return corpus_format::u16;
  if (s == "u32") return corpus_format::u32;
  throw lowbit::error(lowbit::errc::invalid_argument, "unknown data format '" + s + "' (text, u16, u32)");
}

struct dataset {
  std::vector<int32_t> train, val;

  static dataset load(const std::string& path, corpus_format fmt, const tokenizer& tok, int vocab_size,
                      double val_fraction) {
    lowbit::require(val_fraction > 0.0 && val_fraction < 1.0, lowbit::errc::invalid_argument,
                    "validation fraction must be in (0, 1)");
    std::error_code ec;
    lowbit::require(!std::filesystem::is_directory(path, ec), lowbit::errc::io,
                    "corpus '" + path + "' is a directory; --data takes a file");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw lowbit::error(lowbit::errc::io, "cannot open corpus '" + path + "'");
    std::string bytes;
    try {
      bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    } catch (const std::exception& e) {
      throw lowbit::error(lowbit::errc::io, "cannot read corpus '" + path + "': " + e.what());
    }
    std::vector<int32_t> ids;
    if (fmt == corpus_format::text) {
      ids = tok.encode(bytes);
    } else {
      const size_t w = fmt == corpus_format::u16 ? 2 : 4;
      lowbit::require(bytes.size() % w == 0, lowbit::errc::malformed_file,
                      "corpus '" + path + "': " + std::to_string(bytes.size()) + " bytes is not a multiple of " +
                          std::to_string(w) + " (uint" + std::to_string(8 * w) + " token ids)");
      ids.resize(bytes.size() / w);
      for (size_t i = 0; i < ids.size(); ++i) {
        uint32_t v = 0;
        for (size_t b = 0; b < w; ++b) v |= uint32_t(static_cast<unsigned char>(bytes[i * w + b])) << (8 * b);
        lowbit::require(v < uint32_t(vocab_size), lowbit::errc::invalid_argument,
                        "corpus '" + path + "': token " + std::to_string(v) + " at position " + std::to_string(i) +
                            " is outside the model's vocabulary of " + std::to_string(vocab_size));
        ids[i] = int32_t(v);
      }
    }
    for (size_t i = 0; i < ids.size(); ++i)
      lowbit::require(ids[i] >= 0 && ids[i] < vocab_size, lowbit::errc::invalid_argument,
                      "corpus '" + path + "': token " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                          " is outside the model's vocabulary of " + std::to_string(vocab_size));
    dataset d;
    const size_t n_val = size_t(double(ids.size()) * val_fraction);
    d.train.assign(ids.begin(), ids.end() - std::ptrdiff_t(n_val));
    d.val.assign(ids.end() - std::ptrdiff_t(n_val), ids.end());
    return d;
  }

  void require_fits(int64_t seq) const {
    lowbit::require(int64_t(train.size()) > seq + 1 && int64_t(val.size()) > seq + 1, lowbit::errc::invalid_argument,
                    "corpus too small: " + std::to_string(train.size()) + " training and " +
                        std::to_string(val.size()) + " validation tokens for sequences of " + std::to_string(seq));
  }

  // Batch of step `step`: x [batch, seq] and the next tokens y [batch, seq].
  void train_batch(uint64_t seed, int64_t step, int64_t batch, int64_t seq, int32_t* x, int32_t* y) const {
    const uint64_t range = uint64_t(train.size()) - uint64_t(seq) - 1;
    for (int64_t b = 0; b < batch; ++b) {
      const lowbit::philox_result r = lowbit::philox4x32_10(uint32_t(b), uint32_t(step), uint32_t(uint64_t(step) >> 32),
                                                            0xda7a5e7u, uint32_t(seed), uint32_t(seed >> 32));
      const uint64_t offset = ((uint64_t(r.w[0]) << 32) | r.w[1]) % (range + 1);
      window(train, offset, seq, x + b * seq, y + b * seq);
    }
  }

  // Number of validation windows of length seq, and window i of them.
  int64_t val_windows(int64_t seq) const { return (int64_t(val.size()) - 1) / seq; }
  void val_window(int64_t i, int64_t seq, int32_t* x, int32_t* y) const {
    window(val, uint64_t((i % val_windows(seq)) * seq), seq, x, y);
  }

 private:
  static void window(const std::vector<int32_t>& src, uint64_t offset, int64_t seq, int32_t* x, int32_t* y) {
    for (int64_t t = 0; t < seq; ++t) {
      x[t] = src[size_t(offset) + size_t(t)];
      y[t] = src[size_t(offset) + size_t(t) + 1];
    }
  }
};

}  // namespace llama
