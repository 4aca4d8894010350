// Byte-level BPE tokenizer that reads a Hugging Face tokenizer.json (GPT-2 / GPT-NeoX style)
// and reproduces HF `tokenizers` ids exactly. Pipeline, as HF runs it:
//   1. split out added tokens that match the raw text (normalized=false, e.g. <|endoftext|>),
//   2. NFC-normalize the rest (when the json asks for it),
//   3. split out added tokens that match normalized text (GPT-NeoX's runs of spaces),
//   4. pre-tokenize with the GPT-2 regex (data/pretokenize.h), map bytes to the byte-level
//      alphabet, and apply BPE merges by rank.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mlkv::data {

class BpeTokenizer {
 public:
  // Reads and checks a tokenizer.json. Throws DataError naming the file and the unsupported or
  // malformed field.
  static BpeTokenizer load(const std::string& path);

  // Appends the ids of `text` (UTF-8) to `ids`. Throws DataError with the byte offset of
  // invalid UTF-8. Not thread-safe (it caches BPE results per word).
  void encode(std::string_view text, std::vector<int32_t>& ids) const;
  std::vector<int32_t> encode(std::string_view text) const;
  // The text of `ids`: the inverse of encode up to NFC (byte-level BPE is lossless). Tokens are
  // concatenated byte-wise, so a UTF-8 character split across tokens comes out whole once all
  // its tokens are decoded together. Throws DataError for an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids) const;

  // One past the largest id of the vocabulary and the added tokens.
  int64_t vocab_size() const { return static_cast<int64_t>(id_to_token_.size()); }
  // Id of a token given in its vocabulary spelling (byte-level alphabet) or as an added token;
  // -1 when absent.
  int32_t token_id(std::string_view token) const;
  const std::string& path() const { return path_; }

 private:
  struct AddedToken {
    std::string content;
    int32_t id;
  };
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  using Piece = std::pair<std::string_view, int32_t>;  // text, or an added token id (>= 0)

  static void split_added(std::string_view text, const std::vector<AddedToken>& tokens,
                          std::vector<Piece>& out);
  void encode_piece(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;

  std::string path_;
  std::unordered_map<std::string, int32_t> vocab_;  // byte-level spelling -> id
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_is_added_;
  std::unordered_map<uint64_t, Merge> merges_;      // (left id << 32 | right id) -> merge
  std::vector<AddedToken> raw_added_;               // matched before normalization
  std::vector<AddedToken> normalized_added_;        // matched after normalization
  int32_t byte_ids_[256] = {};
  std::string byte_chars_[256];                     // byte -> its byte-level character (UTF-8)
  std::unordered_map<char32_t, uint8_t> char_to_byte_;
  bool nfc_ = false;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  mutable std::unordered_map<std::string, std::vector<int32_t>> word_cache_;
};

}  // namespace mlkv::data
