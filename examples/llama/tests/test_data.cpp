// Tests of the trainer's data side: the validation split, deterministic
// batches drawn by step, pre-tokenized u16 / u32 corpora and their errors,
// and (when built with libsentencepiece-dev, as scripts/install-deps.sh
// does) a SentencePiece tokenizer trained here on tinyshakespeare: exact
// round trips and a model with its vocabulary whose loss falls.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "../dataset.hpp"
#include "../init.hpp"
#include "../session.hpp"
#include "../tokenizer.hpp"

#ifdef LLAMA_HAVE_SENTENCEPIECE
#include <sentencepiece_trainer.h>
#endif

using namespace llama;

namespace {

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), std::streamsize(bytes.size()));
}

}  // namespace

TEST_CASE("byte tokenizer round-trips any bytes; the split holds out the last tenth") {
  const byte_tokenizer tok;
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(char(c));
  CHECK(tok.decode(tok.encode(all)) == all);
  write_file("data_test.txt", all + all + all + all);
  const dataset d = dataset::load("data_test.txt", corpus_format::text, tok, 256, 0.25);
  CHECK(d.train.size() == 768);
  CHECK(d.val.size() == 256);
  CHECK(d.val.front() == 0);
  CHECK(d.val.back() == 255);
  std::remove("data_test.txt");
}

TEST_CASE("training batches depend only on seed and step; targets are the next tokens") {
  const dataset d = dataset::load(LLAMA_TEST_CORPUS, corpus_format::text, byte_tokenizer(), 256, 0.1);
  std::vector<int32_t> x1(4 * 16), y1(4 * 16), x2(4 * 16), y2(4 * 16);
  d.train_batch(1, 7, 4, 16, x1.data(), y1.data());
  d.train_batch(1, 8, 4, 16, x2.data(), y2.data());
  CHECK(x1 != x2);
  d.train_batch(1, 7, 4, 16, x2.data(), y2.data());
  CHECK(x1 == x2);
  CHECK(y1 == y2);
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t + 1 < 16; ++t) CHECK(y1[size_t(r * 16 + t)] == x1[size_t(r * 16 + t + 1)]);
}

TEST_CASE("pre-tokenized uint16 / uint32 corpora load, and bad ones are refused") {
  std::string u16, u32;
  for (int i = 0; i < 1000; ++i) {
    const uint32_t id = uint32_t(i * 7 % 300);
    u16.push_back(char(id & 255));
    u16.push_back(char(id >> 8));
    for (int b = 0; b < 4; ++b) u32.push_back(char((id >> (8 * b)) & 255));
  }
  write_file("tokens_test.u16", u16);
  write_file("tokens_test.u32", u32);
  const byte_tokenizer tok;
  const dataset a = dataset::load("tokens_test.u16", corpus_format::u16, tok, 300, 0.1);
  const dataset b = dataset::load("tokens_test.u32", corpus_format::u32, tok, 300, 0.1);
  CHECK(a.train == b.train);
  CHECK(a.val == b.val);
  CHECK(a.train.size() == 900);
  CHECK(a.train[5] == 35);
  CHECK_THROWS_WITH_AS(dataset::load("tokens_test.u16", corpus_format::u16, tok, 256, 0.1),
                       doctest::Contains("is outside the model's vocabulary of 256"), lowbit::error);
  write_file("tokens_test.u32", u32.substr(0, 3999));
  CHECK_THROWS_WITH_AS(dataset::load("tokens_test.u32", corpus_format::u32, tok, 300, 0.1),
                       doctest::Contains("is not a multiple of 4"), lowbit::error);
  CHECK_THROWS_WITH_AS(parse_corpus_format("u8"), doctest::Contains("unknown data format 'u8'"), lowbit::error);
  std::remove("tokens_test.u16");
  std::remove("tokens_test.u32");
}

#ifdef LLAMA_HAVE_SENTENCEPIECE
TEST_CASE("a SentencePiece tokenizer round-trips text and trains a model with its vocabulary") {
  // Train a 384-piece BPE model (byte fallback, no normalization, as LLaMA's
  // tokenizer) on the first 200 kB of tinyshakespeare.
  std::ifstream f(LLAMA_TEST_CORPUS, std::ios::binary);
  std::string text(200000, '\0');
  f.read(&text[0], std::streamsize(text.size()));
  write_file("sp_train.txt", text);
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=sp_train.txt --model_prefix=sp_test --vocab_size=384 --model_type=bpe --character_coverage=1.0 "
      "--normalization_rule_name=identity --remove_extra_whitespaces=false --byte_fallback=true --minloglevel=2");
  REQUIRE(status.ok());
  const std::unique_ptr<tokenizer> tok = make_tokenizer("sp_test.model");
  CHECK(tok->vocab_size() == 384);
  const std::string sample = "ROMEO:\nBut soft, what light through yonder window breaks?";
  const std::vector<int32_t> ids = tok->encode(sample);
  CHECK(ids.size() < sample.size());  // pieces longer than a byte on average
  CHECK(tok->decode(ids) == sample);

  write_file("sp_corpus.txt", text);
  llama_config c;
  c.vocab_size = tok->vocab_size(), c.dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.hidden_dim = 176;
  c.max_seq_len = 32;
  const dataset d = dataset::load("sp_corpus.txt", corpus_format::text, *tok, c.vocab_size, 0.1);
  session_options o;
  o.batch = 8, o.seq = 32, o.hparams.lr = 1e-3f;
  training_session s(c, find_mode("qft"), o);
  init_random(s.weights(), c, 3);
  const double before = s.evaluate(d, 2);
  std::vector<int32_t> x(8 * 32), y(8 * 32);
  for (int step = 0; step < 40; ++step) {
    d.train_batch(5, step, 8, 32, x.data(), y.data());
    s.step(x.data(), y.data(), 1e-3f, 1.0f);
  }
  const double after = s.evaluate(d, 2);
  MESSAGE("SentencePiece vocab 384, qft: validation loss " << before << " -> " << after);
  CHECK(after < before - 0.3);
  for (const char* p : {"sp_train.txt", "sp_corpus.txt", "sp_test.model", "sp_test.vocab"}) std::remove(p);
}
#endif
