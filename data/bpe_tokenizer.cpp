// Byte-level BPE: tokenizer.json loading, added-token splitting, NFC, pre-tokenization, merges.
#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <queue>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "data/pretokenize.h"
#include "data/unicode.h"

namespace mlkv::data {

namespace {

using nlohmann::json;

// GPT-2's reversible byte -> printable character map: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100 upward in byte order.
void byte_level_alphabet(char32_t (&chars)[256]) {
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    chars[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
  }
}

[[noreturn]] void unsupported(const std::string& path, const std::string& what) {
  throw DataError(path + ": unsupported tokenizer.json: " + what);
}

// Accepts a component given directly or as a one-element Sequence of it.
json unwrap_sequence(const json& node, const char* list_key) {
  if (node.is_object() && node.value("type", "") == "Sequence" && node.contains(list_key) &&
      node[list_key].is_array() && node[list_key].size() == 1) {
    return node[list_key][0];
  }
  return node;
}

}  // namespace

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path + ": cannot open tokenizer file");
  json root;
  try {
    root = json::parse(in);
  } catch (const json::exception& e) {
    throw DataError(path + ": not valid JSON: " + e.what());
  }
  BpeTokenizer tok;
  tok.path_ = path;
  try {
    const json& model = root.at("model");
    if (model.value("type", "BPE") != "BPE") unsupported(path, "model.type must be BPE");
    if (!model.value("dropout", json()).is_null() && model["dropout"] != 0) {
      unsupported(path, "BPE dropout");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model[key].is_null() && model[key] != "") {
        unsupported(path, std::string("model.") + key);
      }
    }
    if (model.value("byte_fallback", false)) unsupported(path, "model.byte_fallback");
    tok.ignore_merges_ = model.value("ignore_merges", false);

    // Normalizer: none or NFC.
    const json normalizer = unwrap_sequence(root.value("normalizer", json()), "normalizers");
    if (!normalizer.is_null()) {
      if (normalizer.value("type", "") != "NFC") {
        unsupported(path, "normalizer " + normalizer.dump() + " (only NFC is implemented)");
      }
      tok.nfc_ = true;
    }
    const json pre = unwrap_sequence(root.value("pre_tokenizer", json()), "pretokenizers");
    if (pre.is_null() || pre.value("type", "") != "ByteLevel" || !pre.value("use_regex", true)) {
      unsupported(path, "pre_tokenizer must be ByteLevel with use_regex");
    }
    tok.add_prefix_space_ = pre.value("add_prefix_space", false);
    const json post = root.value("post_processor", json());
    if (!post.is_null() && post.value("type", "") != "ByteLevel") {
      unsupported(path, "post_processor " + post.value("type", std::string("?")) +
                            " (it would add tokens; only ByteLevel or none)");
    }

    int32_t max_id = -1;
    for (const auto& [token, id] : model.at("vocab").items()) {
      tok.vocab_.emplace(token, id.get<int32_t>());
      max_id = std::max(max_id, id.get<int32_t>());
    }
    std::vector<AddedToken> added;
    for (const json& entry : root.value("added_tokens", json::array())) {
      if (entry.value("lstrip", false) || entry.value("rstrip", false) ||
          entry.value("single_word", false)) {
        unsupported(path, "added token '" + entry.value("content", std::string()) +
                              "' uses lstrip/rstrip/single_word");
      }
      AddedToken t{entry.at("content").get<std::string>(), entry.at("id").get<int32_t>()};
      max_id = std::max(max_id, t.id);
      bool normalized = entry.value("normalized", !entry.value("special", false));
      (normalized ? tok.normalized_added_ : tok.raw_added_).push_back(t);
      added.push_back(t);
    }
    tok.id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
    tok.id_is_added_.assign(static_cast<size_t>(max_id + 1), false);
    for (const auto& [token, id] : tok.vocab_) tok.id_to_token_[static_cast<size_t>(id)] = token;
    for (const AddedToken& t : added) {
      tok.id_to_token_[static_cast<size_t>(t.id)] = t.content;
      tok.id_is_added_[static_cast<size_t>(t.id)] = true;
    }

    char32_t alphabet[256];
    byte_level_alphabet(alphabet);
    for (int b = 0; b < 256; ++b) {
      unicode::append_utf8(alphabet[b], tok.byte_chars_[b]);
      tok.char_to_byte_[alphabet[b]] = static_cast<uint8_t>(b);
      // Bytes that never occur in valid UTF-8 (0xC0, 0xC1, 0xF5-0xFF) may lack a token.
      auto it = tok.vocab_.find(tok.byte_chars_[b]);
      tok.byte_ids_[b] = it == tok.vocab_.end() ? -1 : it->second;
    }

    int32_t rank = 0;
    for (const json& merge : model.at("merges")) {
      std::string left, right;
      if (merge.is_string()) {  // "left right"
        const std::string& text = merge.get_ref<const std::string&>();
        size_t space = text.find(' ', 1);
        if (space == std::string::npos) unsupported(path, "merge '" + text + "' has no space");
        left = text.substr(0, space);
        right = text.substr(space + 1);
      } else {  // ["left", "right"]
        left = merge.at(0).get<std::string>();
        right = merge.at(1).get<std::string>();
      }
      auto l = tok.vocab_.find(left), r = tok.vocab_.find(right),
           m = tok.vocab_.find(left + right);
      if (l == tok.vocab_.end() || r == tok.vocab_.end() || m == tok.vocab_.end()) {
        throw DataError(path + ": merge #" + std::to_string(rank) + " '" + left + " " + right +
                        "' names a token missing from the vocab");
      }
      uint64_t key = (uint64_t(uint32_t(l->second)) << 32) | uint32_t(r->second);
      tok.merges_.emplace(key, Merge{rank, m->second});  // the first (lowest) rank wins
      ++rank;
    }
  } catch (const json::exception& e) {
    throw DataError(path + ": malformed tokenizer.json: " + e.what());
  }
  // Normalized added tokens are matched against normalized text, so normalize them too.
  if (tok.nfc_) {
    for (AddedToken& t : tok.normalized_added_) {
      std::vector<char32_t> codes;
      size_t bad = 0;
      if (!unicode::decode_utf8(t.content, codes, bad)) {
        throw DataError(path + ": added token is not valid UTF-8");
      }
      auto normalized = unicode::nfc(codes);
      t.content = unicode::encode_utf8(std::u32string_view(normalized.data(), normalized.size()));
    }
  }
  return tok;
}

// Leftmost-longest matching of the added tokens (what HF's Aho-Corasick split does).
void BpeTokenizer::split_added(std::string_view text, const std::vector<AddedToken>& tokens,
                               std::vector<Piece>& out) {
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* best = nullptr;
    for (const AddedToken& t : tokens) {
      if (!t.content.empty() && t.content.size() <= text.size() - i &&
          (best == nullptr || t.content.size() > best->content.size()) &&
          text.compare(i, t.content.size(), t.content) == 0) {
        best = &t;
      }
    }
    if (best == nullptr) {
      ++i;
      continue;
    }
    if (i > start) out.emplace_back(text.substr(start, i - start), -1);
    out.emplace_back(std::string_view(), best->id);
    i += best->content.size();
    start = i;
  }
  if (start < text.size()) out.emplace_back(text.substr(start), -1);
}

void BpeTokenizer::encode(std::string_view text, std::vector<int32_t>& ids) const {
  std::vector<char32_t> codes;
  size_t bad_offset = 0;
  if (!unicode::decode_utf8(text, codes, bad_offset)) {
    throw DataError("invalid UTF-8 at byte offset " + std::to_string(bad_offset) + " of the text");
  }
  std::vector<Piece> raw_pieces;
  split_added(text, raw_added_, raw_pieces);
  std::string normalized;
  std::vector<Piece> pieces;
  for (const Piece& raw : raw_pieces) {
    if (raw.second >= 0) {
      ids.push_back(raw.second);
      continue;
    }
    std::string_view piece_text = raw.first;
    if (nfc_) {
      size_t ignored = 0;
      unicode::decode_utf8(piece_text, codes, ignored);
      std::vector<char32_t> composed = unicode::nfc(codes);
      normalized = unicode::encode_utf8(std::u32string_view(composed.data(), composed.size()));
      piece_text = normalized;
    }
    pieces.clear();
    split_added(piece_text, normalized_added_, pieces);
    for (const Piece& piece : pieces) {
      if (piece.second >= 0) {
        ids.push_back(piece.second);
      } else {
        encode_piece(piece.first, ids);
      }
    }
  }
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  encode(text, ids);
  return ids;
}

void BpeTokenizer::encode_piece(std::string_view text, std::vector<int32_t>& ids) const {
  std::string prefixed;
  if (add_prefix_space_ && (text.empty() || text[0] != ' ')) {
    prefixed.push_back(' ');
    prefixed.append(text);
    text = prefixed;
  }
  std::vector<char32_t> codes;
  size_t ignored = 0;
  unicode::decode_utf8(text, codes, ignored);
  // Byte offset of every code point, to cut words out of `text` without re-encoding.
  std::vector<size_t> byte_at(codes.size() + 1, text.size());
  for (size_t c = 0, b = 0; c < codes.size(); ++c) {
    byte_at[c] = b;
    b += codes[c] < 0x80 ? 1 : codes[c] < 0x800 ? 2 : codes[c] < 0x10000 ? 3 : 4;
  }
  std::vector<std::pair<size_t, size_t>> words;
  pretokenize(codes, words);
  for (const auto& [begin, end] : words) {
    encode_word(text.substr(byte_at[begin], byte_at[end] - byte_at[begin]), ids);
  }
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  std::string key(word);
  if (auto hit = word_cache_.find(key); hit != word_cache_.end()) {
    ids.insert(ids.end(), hit->second.begin(), hit->second.end());
    return;
  }
  if (ignore_merges_) {
    std::string spelled;
    for (unsigned char b : word) spelled += byte_chars_[b];
    if (auto it = vocab_.find(spelled); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  // Symbols form a linked list; a min-heap of candidate merges ordered by (rank, position)
  // applies the lowest-ranked merge first, leftmost on ties, skipping stale entries.
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, merged_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  const int n = static_cast<int>(word.size());
  std::vector<Symbol> symbols(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (byte_ids_[static_cast<unsigned char>(word[size_t(i)])] < 0) {
      throw DataError(path_ + ": the vocab has no token for byte " +
                      std::to_string(static_cast<unsigned char>(word[size_t(i)])));
    }
    symbols[size_t(i)] = {byte_ids_[static_cast<unsigned char>(word[size_t(i)])], i - 1,
                          i + 1 < n ? i + 1 : -1, true};
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int left) {
    if (left < 0) return;
    int right = symbols[size_t(left)].next;
    if (right < 0) return;
    uint64_t pair = (uint64_t(uint32_t(symbols[size_t(left)].id)) << 32) |
                    uint32_t(symbols[size_t(right)].id);
    if (auto it = merges_.find(pair); it != merges_.end()) {
      heap.push({it->second.rank, left, it->second.merged_id});
    }
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[size_t(top.pos)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[size_t(left.next)];
    uint64_t pair = (uint64_t(uint32_t(left.id)) << 32) | uint32_t(right.id);
    auto it = merges_.find(pair);
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;  // stale
    left.id = top.merged_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[size_t(right.next)].prev = top.pos;
    consider(left.prev);
    consider(top.pos);
  }
  std::vector<int32_t> out;
  for (int i = 0; i >= 0 && i < n; i = symbols[size_t(i)].next) out.push_back(symbols[size_t(i)].id);
  ids.insert(ids.end(), out.begin(), out.end());
  if (word_cache_.size() > (1u << 18)) word_cache_.clear();  // bounded memory
  word_cache_.emplace(std::move(key), std::move(out));
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size())
      throw DataError(path_ + ": token id " + std::to_string(id) + " at position " + std::to_string(i) +
                      " is not in the vocabulary [0, " + std::to_string(vocab_size()) + ")");
    const std::string& token = id_to_token_[size_t(id)];
    if (id_is_added_[size_t(id)]) {
      text += token;
      continue;
    }
    std::vector<char32_t> codes;
    size_t ignored = 0;
    unicode::decode_utf8(token, codes, ignored);
    for (char32_t c : codes) {
      auto it = char_to_byte_.find(c);
      if (it != char_to_byte_.end()) text.push_back(static_cast<char>(it->second));
    }
  }
  return text;
}

int32_t BpeTokenizer::token_id(std::string_view token) const {
  for (const auto* list : {&raw_added_, &normalized_added_}) {
    for (const AddedToken& t : *list) {
      if (t.content == token) return t.id;
    }
  }
  auto it = vocab_.find(std::string(token));
  return it == vocab_.end() ? -1 : it->second;
}

}  // namespace mlkv::data
