// examples/llama/tokenizer.hpp
// Text <-> token ids. byte tokenizer: each UTF-8 byte is one token (vocab
// 256, nothing to train or download), the default for tinyshakespeare.
// SentencePiece: a real LLaMA `tokenizer.model`, when the trainer was built
// with Debian's libsentencepiece-dev (LLAMA_HAVE_SENTENCEPIECE); otherwise
// asking for one is a clear error.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <lowbit/core/error.hpp>

#ifdef LLAMA_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace llama {

class tokenizer {
 public:
  virtual ~tokenizer() = default;
  virtual int vocab_size() const = 0;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual std::string name() const = 0;
};

class byte_tokenizer final : public tokenizer {
 public:
  int vocab_size() const override { return 256; }
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = int32_t(static_cast<unsigned char>(text[i]));
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t t : ids) s.push_back(char(static_cast<unsigned char>(t & 255)));
    return s;
  }
  std::string name() const override { return "byte"; }
};

#ifdef LLAMA_HAVE_SENTENCEPIECE
class sentencepiece_tokenizer final : public tokenizer {
 public:
  explicit sentencepiece_tokenizer(const std::string& path) : path_(path) {
    const auto status = sp_.Load(path);
    if (!status.ok())
      throw lowbit::error(lowbit::errc::io, "cannot load SentencePiece model '" + path + "': " + status.ToString());
  }
  int vocab_size() const override { return sp_.GetPieceSize(); }
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(text, &ids);
    if (!status.ok()) throw lowbit::error(lowbit::errc::invalid_argument, "SentencePiece encode: " + status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    const auto status = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    if (!status.ok()) throw lowbit::error(lowbit::errc::invalid_argument, "SentencePiece decode: " + status.ToString());
    return out;
  }
  std::string name() const override { return "sentencepiece:" + path_; }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
};
#endif

// "byte", or the path of a SentencePiece model.
inline std::unique_ptr<tokenizer> make_tokenizer(const std::string& spec) {
  if (spec.empty() || spec == "byte") return std::make_unique<byte_tokenizer>();
#ifdef LLAMA_HAVE_SENTENCEPIECE
  return std::make_unique<sentencepiece_tokenizer>(spec);
#else
  throw lowbit::error(lowbit::errc::unsupported, "tokenizer '" + spec +
                                                     "': this build has no SentencePiece support (install "
                                                     "libsentencepiece-dev and reconfigure), only 'byte'");
#endif
}

}  // namespace llama
