// What makes an export self-contained besides the weights: the tokenizer files (from the bundled
// Pythia tokenizer by default) and, for a model imported from HF, the source's token ids and
// generation config, recorded at import in CKPT/hf_source.json (convert.h).
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/convert.h"
#include "core/errors.h"

namespace mlkv::convert {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw ConfigError(p.string() + ": cannot read");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

json parse_object(const std::string& text, const std::string& where) {
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw ConfigError(where + ": not a JSON object");
  return j;
}

// HF configs spell a token id as an int, a list (several EOS ids: the first is the one we write) or null.
int token_id(const json& j, const char* key, int fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  const json& v = j[key].is_array() && !j[key].empty() ? j[key][0] : j[key];
  if (!v.is_number_integer() || v.get<int64_t>() < 0)
    throw ConfigError(where + ": " + key + " must be a non-negative integer, got " + j[key].dump());
  return v.get<int>();
}

// Every token of a tokenizer.json by id: the model's vocabulary (BPE/WordPiece: {token: id}; Unigram:
// [[token, score], ...]) and the added tokens.
std::map<int64_t, std::string> tokens_by_id(const json& t, const std::string& where) {
  std::map<int64_t, std::string> by_id;
  if (!t.contains("model") || !t["model"].is_object() || !t["model"].contains("vocab"))
    throw ConfigError(where + ": no model.vocab (not a tokenizers tokenizer.json)");
  const json& vocab = t["model"]["vocab"];
  if (vocab.is_object()) {
    for (auto it = vocab.begin(); it != vocab.end(); ++it)
      if (it.value().is_number_integer()) by_id[it.value().get<int64_t>()] = it.key();
  } else if (vocab.is_array()) {
    for (size_t i = 0; i < vocab.size(); ++i)
      if (vocab[i].is_array() && !vocab[i].empty() && vocab[i][0].is_string()) by_id[int64_t(i)] = vocab[i][0];
  }
  for (const json& a : t.value("added_tokens", json::array()))
    if (a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") && a["content"].is_string())
      by_id[a["id"].get<int64_t>()] = a["content"];
  if (by_id.empty()) throw ConfigError(where + ": model.vocab holds no tokens");
  return by_id;
}

}  // namespace

void record_hf_source(const std::string& ckpt, const std::string& hf_dir) {
  const fs::path dir(hf_dir), cfg_path = dir / "config.json";
  const json cfg = parse_object(read_file(cfg_path), cfg_path.string());
  ordered_json rec;
  rec["source"] = fs::absolute(dir).lexically_normal().string();
  rec["bos_token_id"] = token_id(cfg, "bos_token_id", 0, cfg_path.string());
  rec["eos_token_id"] = token_id(cfg, "eos_token_id", 0, cfg_path.string());
  rec["pad_token_id"] = token_id(cfg, "pad_token_id", -1, cfg_path.string());
  rec["generation_config"] = nullptr;
  if (const fs::path gen = dir / "generation_config.json"; fs::exists(gen))
    rec["generation_config"] = ordered_json::parse(read_file(gen), nullptr, false);
  if (rec["generation_config"].is_discarded() || !(rec["generation_config"].is_null() || rec["generation_config"].is_object()))
    throw ConfigError((dir / "generation_config.json").string() + ": not a JSON object");
  const fs::path out = fs::path(ckpt) / kHfSourceFile, tmp = out.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << rec.dump(2) << "\n";
    if (!f) throw IoError(tmp.string() + ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, out, ec);
  if (ec) throw IoError(out.string() + ": rename failed: " + ec.message());
}

HfProvenance find_hf_source(const std::string& step_dir, const Config& config) {
  // An imported checkpoint has hf_source.json beside its step directories; a run trained from one
  // names it in train.init_from (a checkpoint directory or a step directory), possibly over several
  // hops (an uptraining started from another uptraining). The hop limit stops a cycle of links.
  std::vector<fs::path> look{fs::path(step_dir).parent_path()};
  std::string next = config.train.init_from;
  for (int hop = 0; hop < 8 && !next.empty() && fs::exists(next); ++hop) {
    look.push_back(fs::is_directory(next) ? fs::path(next) : fs::path(next).parent_path());
    look.push_back(fs::path(next).parent_path());
    try {
      next = open_checkpoint(next).config.train.init_from;
    } catch (const Error&) {
      next.clear();
    }
  }
  for (const fs::path& d : look) {
    const fs::path p = d / kHfSourceFile;
    if (!fs::exists(p)) continue;
    const json j = parse_object(read_file(p), p.string());
    HfProvenance h;
    h.source = j.value("source", p.string());
    h.bos_token_id = token_id(j, "bos_token_id", 0, p.string());
    h.eos_token_id = token_id(j, "eos_token_id", 0, p.string());
    h.pad_token_id = j.contains("pad_token_id") && j["pad_token_id"].is_number_integer() ? j["pad_token_id"].get<int>() : -1;
    if (j.contains("generation_config") && j["generation_config"].is_object())
      h.generation_config = j["generation_config"].dump(2) + "\n";
    return h;
  }
  return {};
}

TokenizerFiles prepare_tokenizer(const std::string& from, const ModelSpec& spec, const HfProvenance& ids) {
  TokenizerFiles out;
  std::string text, where;
  fs::path dir;  // set when `from` is a directory: its tokenizer_config.json etc. are copied
  if (from == kBundledTokenizer || from == std::string(kBundledTokenizer) + ".json") {
    text = std::string(embedded_file("gpt-neox-20b.json"));
    if (text.empty()) throw IoError("export: this build lacks the embedded gpt-neox-20b.json (core/hf/embed.cmake)");
    where = out.from = std::string("the bundled ") + kBundledTokenizer + " tokenizer";
  } else if (fs::is_directory(from)) {
    dir = from;
    if (!fs::exists(dir / "tokenizer.json"))
      throw ConfigError(from + ": no tokenizer.json in this directory (--tokenizer-from takes a tokenizer.json, a "
                        "directory holding one, or " + kBundledTokenizer + ", the bundled tokenizer)");
    where = out.from = (dir / "tokenizer.json").string();
    text = read_file(dir / "tokenizer.json");
  } else if (fs::is_regular_file(from)) {
    where = out.from = from;
    text = read_file(from);
  } else {
    throw ConfigError(from + ": no such tokenizer file or directory (--tokenizer-from takes a tokenizer.json, a "
                      "directory holding one, or " + kBundledTokenizer + ", the bundled tokenizer)");
  }
  const std::map<int64_t, std::string> by_id = tokens_by_id(parse_object(text, where), where);
  if (by_id.rbegin()->first >= spec.vocab)
    throw ConfigError(where + ": token id " + std::to_string(by_id.rbegin()->first) + " does not fit the model's vocab_size " +
                      std::to_string(spec.vocab) + " (pass a matching --tokenizer-from, or --no-tokenizer)");
  auto token = [&](int id, const char* what) {
    const auto it = by_id.find(id);
    if (it == by_id.end())
      throw ConfigError(where + ": has no token with id " + std::to_string(id) + ", the model's " + what);
    return it->second;
  };
  const std::string bos = token(ids.bos_token_id, "bos_token_id"), eos = token(ids.eos_token_id, "eos_token_id");
  out.files.emplace_back("tokenizer.json", std::move(text));

  // GPT-NeoX's tokenizer uses <|endoftext|> as bos, eos and unk, and adds none of them itself.
  ordered_json special = {{"bos_token", bos}, {"eos_token", eos}, {"unk_token", eos}};
  if (ids.pad_token_id >= 0) special["pad_token"] = token(ids.pad_token_id, "pad_token_id");
  ordered_json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},  // loads tokenizer.json as it is
                         {"add_bos_token", false},
                         {"add_eos_token", false},
                         {"clean_up_tokenization_spaces", false},
                         {"model_max_length", spec.max_seq_len}};
  config.update(special);
  const std::pair<const char*, ordered_json> written[] = {{"tokenizer_config.json", config},
                                                          {"special_tokens_map.json", special}};
  for (const auto& [name, generated] : written) {
    if (!dir.empty() && fs::exists(dir / name)) {  // the source's own file knows best
      std::string copied = read_file(dir / name);
      parse_object(copied, (dir / name).string());
      out.files.emplace_back(name, std::move(copied));
    } else {
      out.files.emplace_back(name, generated.dump(2) + "\n");
    }
  }
  return out;
}

}  // namespace mlkv::convert
