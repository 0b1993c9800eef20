// examples/llama/tests/fixtures.hpp
// The small model and the corpus the CPU trainer tests share: a 2-layer
// model with grouped-query heads (dim 64, 4 heads / 2 kv heads, SwiGLU 176,
// byte vocabulary) and tinyshakespeare with the byte tokenizer (last 10 %
// held out), loaded once per test binary.
#pragma once

#include "../config.hpp"
#include "../dataset.hpp"
#include "../tokenizer.hpp"

namespace llama {

inline llama_config small_test_config() {
  llama_config c;
  c.vocab_size = 256, c.dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.hidden_dim = 176;
  c.max_seq_len = 64;
  return c;
}

inline const dataset& test_corpus() {
  static const dataset d = dataset::load(LLAMA_TEST_CORPUS, corpus_format::text, byte_tokenizer(), 256, 0.1);
  return d;
}

}  // namespace llama
