// Config loading (DESIGN §5). The schema table below is the single source of truth: every key's
// name, field, type, default (read from a default-constructed Config), allowed values, whether it
// is required, and its documentation. Parsing, `--set` overrides, validation, the resolved TOML and
// the Markdown key reference are all derived from it, so they cannot drift apart.
// TOML++ is included here only: it does not compile under nvcc (DESIGN §5).
#include "core/config.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <variant>

#if __has_include(<toml++/toml.hpp>)
#include <toml++/toml.hpp>
#else
#include <toml++/toml.h>  // TOML++ 3.3 (Debian 12) names its header toml.h
#endif

#include "core/config_unicode.h"
#include "core/errors.h"
#include "core/logging.h"
#include "core/optimizer.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- Schema types ------------------------------------------------------------------------------

// A key is bound to its field by an accessor; the variant alternative is the key's type.
using FieldRef = std::variant<int& (*)(Config&), int64_t& (*)(Config&), uint64_t& (*)(Config&),
                              double& (*)(Config&), bool& (*)(Config&), std::string& (*)(Config&),
                              std::vector<int>& (*)(Config&)>;

std::string format_number(double v);

// An interval of allowed numbers (for lists: of every element).
struct Bounds {
  double lo = -kInf, hi = kInf;
  bool lo_open = false, hi_open = false;

  bool contains(double v) const {
    return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi) && !std::isnan(v);
  }
  bool any() const { return lo != -kInf || hi != kInf; }
  std::string text() const {
    if (!any()) return "";
    if (hi == kInf) return (lo_open ? "> " : ">= ") + format_number(lo);
    if (lo == -kInf) return (hi_open ? "< " : "<= ") + format_number(hi);
    return (lo_open ? "(" : "[") + format_number(lo) + ", " + format_number(hi) + (hi_open ? ")" : "]");
  }
};

struct Key {
  std::string name;  // dotted: "section.field"
  FieldRef field;
  std::string doc;
  Bounds bounds;
  std::vector<std::string> choices;  // string keys: the allowed values (empty = free text)
  bool is_required = false;
  bool is_f32 = false;  // read as a 32-bit float by the kernels: its range is checked as that float

  Key(std::string n, FieldRef f, std::string d) : name(std::move(n)), field(f), doc(std::move(d)) {}
  Key min(double v) && { bounds.lo = v; return std::move(*this); }
  Key max(double v) && { bounds.hi = v; return std::move(*this); }
  Key above(double v) && { bounds.lo = v; bounds.lo_open = true; return std::move(*this); }
  Key below(double v) && { bounds.hi = v; bounds.hi_open = true; return std::move(*this); }
  Key one_of(std::vector<std::string> c) && { choices = std::move(c); return std::move(*this); }
  Key required() && { is_required = true; return std::move(*this); }
  Key f32() && { is_f32 = true; return std::move(*this); }

  std::string section() const { return name.substr(0, name.find('.')); }
  std::string leaf() const { return name.substr(name.find('.') + 1); }
};

// Binds "section.field" to c.section.field in one place, so the name and the field cannot disagree.
#define MLKV_KEY(sec, fld, doc) Key(#sec "." #fld, +[](Config& c) -> auto& { return c.sec.fld; }, doc)

struct Section {
  const char* name;
  const char* doc;
};

const std::vector<Section>& sections() {
  static const std::vector<Section> s = {
      {"model", "The GPT-NeoX (Pythia) architecture (DESIGN §2)."},
      {"kv", "The MLKV plan: which layers own K/V and how many KV heads they have (DESIGN §3)."},
      {"train", "The training run."},
      {"optim", "AdamW and the learning-rate schedule (DESIGN §2)."},
      {"data", "Token shards (DESIGN §6). Paths are relative to the working directory."},
      {"checkpoint", "Checkpoints (DESIGN §7). Paths are relative to the working directory."},
      {"log", "Metrics and logs."},
      {"parallel", "Tensor and data parallelism (DESIGN §3b, §5). World size = dp × tp."},
  };
  return s;
}

const std::vector<Key>& schema() {
  static const std::vector<Key> keys = [] {
    std::vector<Key> k;
    // [model]
    k.push_back(MLKV_KEY(model, name, "Free-text model name shown in logs, e.g. `pythia-160m`."));
    k.push_back(MLKV_KEY(model, layers, "Transformer layers L.").min(1).max(1024).required());
    k.push_back(MLKV_KEY(model, d_model, "Hidden size d; must be a multiple of `model.heads`.").min(1).max(65536).required());
    k.push_back(MLKV_KEY(model, heads, "Query heads; head dim = d_model / heads.").min(1).max(1024).required());
    k.push_back(MLKV_KEY(model, vocab_size, "Padded vocabulary: 50304 (Pythia 70M–2.8B), 50432 (6.9B), 50688 (12B).").min(2).max(INT32_MAX));
    k.push_back(MLKV_KEY(model, max_seq_len, "Longest sequence the rotary tables are built for.").min(1).max(1 << 20));
    k.push_back(MLKV_KEY(model, rotary_pct, "Fraction of each head's dims that get rotary; head_dim·rotary_pct must be even.").min(0).max(1).f32());
    k.push_back(MLKV_KEY(model, rotary_base, "Rotary base θ.").above(0).f32());
    k.push_back(MLKV_KEY(model, ln_eps, "LayerNorm epsilon.").above(0).below(1).f32());
    k.push_back(MLKV_KEY(model, ffn, "MLP hidden width; 0 = 4·d_model.").min(0).max(1 << 22));
    // [kv]
    k.push_back(MLKV_KEY(kv, kv_heads, "KV heads of every KV layer; must divide `model.heads`; 0 = model.heads.").min(0).max(1024));
    k.push_back(MLKV_KEY(kv, kv_layers, "Layers that own K/V, placed by the paper's rule; 0 = every layer. Ignored when `kv.owners` is set.").min(0).max(1024));
    k.push_back(MLKV_KEY(kv, owners, "Explicit KV layers, strictly increasing from 0, e.g. `[0, 3, 6, 9]`; `[]` = use `kv.kv_layers`.").min(0).max(1023));
    k.push_back(MLKV_KEY(kv, rope_shared_keys, "Non-owner layers read the owner's rotated K; false = the seed paper's un-rotated K, for its checkpoints only."));
    k.push_back(MLKV_KEY(kv, merge, "Conversion: how a group's K/V are combined into its owner.").one_of({"mean", "paper", "owner"}));
    k.push_back(MLKV_KEY(kv, widen_mlp, "Conversion: widen the MLP to restore the parameter count (the paper's option)."));
    // [train]
    k.push_back(MLKV_KEY(train, steps, "Optimizer steps.").min(1).required());
    k.push_back(MLKV_KEY(train, micro_batch, "Sequences per micro-step per data-parallel rank.").min(1).max(1 << 16));
    k.push_back(MLKV_KEY(train, grad_accum, "Micro-steps per optimizer step; global batch = micro_batch · grad_accum · dp.").min(1).max(1 << 16));
    k.push_back(MLKV_KEY(train, seq_len, "Tokens per training sequence; at most `model.max_seq_len`.").min(1).max(1 << 20));
    k.push_back(MLKV_KEY(train, seed, "Seed of initialisation and data order.").min(0));
    k.push_back(MLKV_KEY(train, backend, "Compute backend; auto = cuda when a GPU is present, else cpu.").one_of({"auto", "cpu", "cuda"}));
    k.push_back(MLKV_KEY(train, attention, "CUDA attention: auto = the faster measured path per head dim and KV grouping (ours at head dim 64, and at 80 with K/V shared by 2 or more query heads, cuDNN's elsewhere; ours where cuDNN is missing or cannot run the shape; the start-up line says which and why); flash = our MLKV kernels (deterministic); cudnn = cuDNN's fused SDPA (needs cuDNN at build time). The CPU backend has one reference for all three.").one_of({"auto", "flash", "cudnn"}));
    k.push_back(MLKV_KEY(train, recompute, "Activation recomputation in backward.").one_of({"none", "attention", "block"}));
    k.push_back(MLKV_KEY(train, init_from, "Checkpoint directory to start from at step 0 (e.g. mlkv-convert output); empty = random init."));
    k.push_back(MLKV_KEY(train, eval_interval, "Steps between validation passes; 0 = only at the end.").min(0));
    k.push_back(MLKV_KEY(train, eval_batches, "Global batches per validation pass.").min(1));
    k.push_back(MLKV_KEY(train, max_bad_steps, "Consecutive non-finite steps before stopping.").min(1));
    k.push_back(MLKV_KEY(train, threads, "CPU backend threads; 0 = all cores.").min(0).max(4096));
    k.push_back(MLKV_KEY(train, allow_batch_change, "Resume a checkpoint written with another global batch (micro_batch · grad_accum · dp); false refuses such a resume (exit 2)."));
    // [optim]
    k.push_back(MLKV_KEY(optim, lr, "Peak learning rate.").min(0).max(1).f32());
    k.push_back(MLKV_KEY(optim, min_lr_ratio, "Final learning rate as a fraction of the peak.").min(0).max(1));
    k.push_back(MLKV_KEY(optim, warmup_fraction, "Linear warmup as a fraction of `train.steps`.").min(0).max(1));
    k.push_back(MLKV_KEY(optim, warmup_steps, "Warmup steps; >= 0 overrides `optim.warmup_fraction`, -1 = use the fraction.").min(-1));
    k.push_back(MLKV_KEY(optim, schedule, "Decay after warmup, down to lr · min_lr_ratio.").one_of({"cosine", "constant", "linear"}));
    k.push_back(MLKV_KEY(optim, beta1, "Adam β1.").min(0).below(1).f32());
    k.push_back(MLKV_KEY(optim, beta2, "Adam β2.").min(0).below(1).f32());
    k.push_back(MLKV_KEY(optim, eps, "Adam epsilon.").above(0).max(1).f32());
    k.push_back(MLKV_KEY(optim, weight_decay, "Decoupled weight decay (not on biases or LayerNorm).").min(0).max(10).f32());
    k.push_back(MLKV_KEY(optim, grad_clip, "Global gradient-norm clip; 0 = off.").min(0).f32());
    // [data]
    k.push_back(MLKV_KEY(data, path, "Training shards: a directory, file or glob. Needed by mlkv-train."));
    k.push_back(MLKV_KEY(data, val_path, "Held-out shards; empty = use `data.val_fraction`."));
    k.push_back(MLKV_KEY(data, val_fraction, "Fraction of `data.path` held out for validation when `data.val_path` is empty.").min(0).below(1));
    k.push_back(MLKV_KEY(data, shuffle, "Shuffle the sample order (a pure function of seed and epoch)."));
    k.push_back(MLKV_KEY(data, prefetch, "Batches read ahead by the background reader.").min(1).max(1024));
    k.push_back(MLKV_KEY(data, verify, "When every shard chunk is checked (CRC-32, ids, max_token_id): `full` before step 1, `lazy` as each chunk is first read (a failure checkpoints, then stops with exit 2), `auto` = full up to 2^27 tokens, else lazy.").one_of({"auto", "full", "lazy"}));
    // [checkpoint]
    k.push_back(MLKV_KEY(checkpoint, dir, "Directory of step checkpoints and the `latest` pointer."));
    k.push_back(MLKV_KEY(checkpoint, interval, "Steps between checkpoints; 0 = only at the end.").min(0));
    k.push_back(MLKV_KEY(checkpoint, keep_last, "Checkpoints kept; older ones are deleted.").min(1));
    // [log]
    k.push_back(MLKV_KEY(log, dir, "Directory of metrics.jsonl and TensorBoard events."));
    k.push_back(MLKV_KEY(log, interval, "Steps between log lines.").min(1));
    k.push_back(MLKV_KEY(log, tensorboard, "Also write TensorBoard event files."));
    k.push_back(MLKV_KEY(log, peak_flops, "Peak FLOP/s per GPU for MFU (989e12 = H100 SXM bf16 dense).").above(0));
    // [parallel]
    k.push_back(MLKV_KEY(parallel, tp, "Tensor-parallel ranks; must divide heads and ffn, and divide or be a multiple of kv_heads.").min(1).max(64));
    k.push_back(MLKV_KEY(parallel, zero1, "Shard optimizer state across data-parallel ranks (ZeRO-1)."));
    k.push_back(MLKV_KEY(parallel, bucket_mb, "Gradient bucket size in MiB for the overlapped reduce-scatter.").above(0).max(4096));
    k.push_back(MLKV_KEY(parallel, comm_timeout_s, "Seconds a collective (MPI or NCCL) may take before the job is ended with exit 5: a rank died or hangs. Above the slowest checkpoint write (the other ranks wait for rank 0's). Was `parallel.nccl_timeout_s`.").above(0));
    return k;
  }();
  return keys;
}

#undef MLKV_KEY

const Key* find_key(const std::string& name) {
  for (const Key& k : schema())
    if (k.name == name) return &k;
  return nullptr;
}

bool is_section(const std::string& name) {
  return std::any_of(sections().begin(), sections().end(), [&](const Section& s) { return name == s.name; });
}

// ---- Formatting --------------------------------------------------------------------------------

std::string format_double(double v) {  // shortest text that reads back as the same double, as a TOML float
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, end);
  if (const size_t e = s.find('e'); e != std::string::npos) {  // "6e-04" -> "6e-4", "9.89e+14" -> "9.89e14"
    size_t digits = e + 1 + (s[e + 1] == '-' || s[e + 1] == '+');
    const std::string sign = s[e + 1] == '-' ? "-" : "";
    while (digits + 1 < s.size() && s[digits] == '0') ++digits;
    s = s.substr(0, e + 1) + sign + s.substr(digits);
  } else if (s.find('.') == std::string::npos) {
    s += ".0";  // "2" would read back as an integer
  }
  return s;
}

std::string format_number(double v) {  // for messages and docs: integers without ".0"
  if (std::abs(v) < 1e15 && v == std::floor(v)) return std::to_string(static_cast<int64_t>(v));
  return format_double(v);
}

std::string quote(const std::string& s) {  // a TOML basic string
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

std::string format_value(const Key& k, const Config& cfg) {
  Config c = cfg;  // accessors take a mutable Config; a copy keeps `cfg` const
  return std::visit(
      [&](auto get) -> std::string {
        const auto& v = get(c);
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, double>) return format_double(v);
        else if constexpr (std::is_same_v<T, std::string>) return quote(v);
        else if constexpr (std::is_same_v<T, std::vector<int>>) {
          std::string s = "[";
          for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
          return s + "]";
        } else return std::to_string(v);
      },
      k.field);
}

std::string type_name(const Key& k) {
  static const char* names[] = {"integer", "integer", "integer", "float", "boolean", "string", "integer list"};
  return names[k.field.index()];
}

std::string node_type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    default: return "a date/time";
  }
}

// "file:line:column" of a parsed node; `fallback` when TOML++ recorded no position (implicit tables).
std::string where(const toml::source_region& r, const std::string& fallback) {
  if (r.begin.line == 0) return fallback;
  const std::string file = r.path ? *r.path : "<config>";  // every parse here names its source
  return file + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
}

[[noreturn]] void fail(const std::string& at, const std::string& key, const std::string& msg) {
  throw ConfigError(at + ": " + key + ": " + msg);
}

// ---- Suggestions for unknown keys --------------------------------------------------------------

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

// The known key closest to `name`; a key with the same field name in another section counts as close.
std::string closest_key(const std::string& name) {
  const std::string leaf = name.substr(name.find('.') + 1);
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const Key& k : schema()) {
    size_t d = std::min(edit_distance(name, k.name), edit_distance(leaf, k.leaf()) + 1);
    if (d < best_d) best_d = d, best = k.name;
  }
  return best;
}

// Keys that were renamed: the old name still reads (checkpoints hold config.toml files written
// with it), with a warning naming the new one.
const std::map<std::string, std::string>& renamed_keys() {
  static const std::map<std::string, std::string> renamed = {{"parallel.nccl_timeout_s", "parallel.comm_timeout_s"}};
  return renamed;
}

std::string current_name(const std::string& name, const std::string& site) {
  const auto it = renamed_keys().find(name);
  if (it == renamed_keys().end()) return name;
  log::warn(site + ": " + name + " is now called " + it->second + "; reading it as that");
  return it->second;
}

std::string closest_section(const std::string& name) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const Section& s : sections())
    if (size_t d = edit_distance(name, s.name); d < best_d) best_d = d, best = s.name;
  return best;
}

// ---- Loading: files, includes, overrides -------------------------------------------------------

void unshield_strings(toml::node& n) {
  if (toml::table* t = n.as_table()) {
    for (auto&& [k, v] : *t) unshield_strings(v);
  } else if (toml::array* a = n.as_array()) {
    for (toml::node& v : *a) unshield_strings(v);
  } else if (toml::value<std::string>* str = n.as_string()) {
    str->get() = unshield_from_toml(str->get());
  }
}

// toml::parse behind the guard against TOML++ 3.3's unclassifiable code points (config_unicode.h).
toml::table parse_toml(const std::string& text, const std::string& source) {
  toml::table doc = toml::parse(shield_for_toml(text, source), source);
  unshield_strings(doc);
  return doc;
}

std::string description(const toml::parse_error& e) { return unshield_from_toml(std::string(e.description())); }

// Where a key was last set, and to what. Nodes point into documents the Loader keeps alive.
struct Setting {
  const toml::node* value;
  std::string key_at;    // "file:line:col" of the key, or "--set ARG"
  std::string value_at;  // the same for its value
};

class Loader {
 public:
  void load_file(const fs::path& file, const std::string& include_site);
  void load_text(const std::string& text, const fs::path& name);
  void apply_override(const std::string& arg);
  Config build(const std::string& source) const;
  void warn_conflicts(const Config& c) const;

 private:
  void take(toml::table& doc, const fs::path& file);
  void follow_includes(const toml::table& doc, const fs::path& file);
  std::string at(const std::string& key) const;

  std::vector<std::unique_ptr<toml::table>> docs_;  // owns every parsed node
  std::map<std::string, Setting> settings_;         // dotted key -> last definition
  std::map<std::string, std::string> section_at_;   // section -> where it was last opened
  std::vector<fs::path> stack_;                     // files being loaded, for cycle detection
  std::string top_;                                 // the first file, for errors with no better place
};

std::string read_file(const fs::path& file, const std::string& include_site) {
  // The top-level file names itself; an included one is named after the include that wants it.
  const std::string prefix = include_site.empty() ? file.string() + ": cannot read config file"
                                                  : include_site + ": include: cannot read '" + file.string() + "'";
  std::error_code ec;
  if (!fs::is_regular_file(file, ec))
    throw ConfigError(prefix + ": " + (fs::exists(file, ec) ? "not a regular file" : "no such file"));
  std::ifstream in(file, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in) throw ConfigError(prefix + ": " + std::strerror(errno));
  return ss.str();
}

void Loader::load_file(const fs::path& file, const std::string& include_site) {
  if (top_.empty()) top_ = file.string();
  const std::string text = read_file(file, include_site);
  const fs::path canon = fs::weakly_canonical(file);
  if (std::find(stack_.begin(), stack_.end(), canon) != stack_.end()) {
    std::string chain;
    for (const fs::path& p : stack_) chain += p.filename().string() + " -> ";
    throw ConfigError(include_site + ": include: include cycle " + chain + canon.filename().string());
  }
  stack_.push_back(canon);
  load_text(text, file);
  stack_.pop_back();
}

void Loader::load_text(const std::string& text, const fs::path& name) {
  if (top_.empty()) top_ = name.string();
  try {
    docs_.push_back(std::make_unique<toml::table>(parse_toml(text, name.string())));
  } catch (const toml::parse_error& e) {
    throw ConfigError(where(e.source(), name.string()) + ": TOML syntax error: " + description(e));
  }
  toml::table& doc = *docs_.back();
  follow_includes(doc, name);  // bases first, so this file's keys win
  take(doc, name);
}

void Loader::follow_includes(const toml::table& doc, const fs::path& file) {
  const toml::node* inc = doc.get("include");
  if (!inc) return;
  std::vector<const toml::node*> items;
  if (const toml::array* arr = inc->as_array())
    for (const toml::node& n : *arr) items.push_back(&n);
  else
    items.push_back(inc);
  for (const toml::node* n : items) {
    const std::string site = where(n->source(), file.string());
    if (!n->is_string())
      fail(site, "include", "expected a file name or a list of them, got " + node_type_name(*n));
    // Relative to the including file, so a config finds its base wherever it is run from.
    const fs::path target = (file.parent_path() / n->as_string()->get()).lexically_normal();
    load_file(target, site);
  }
}

void Loader::take(toml::table& doc, const fs::path& file) {
  const std::string fallback = file.string() + ":1:1";
  for (auto&& [k, v] : doc) {
    const std::string name(k.str());
    const std::string key_at = where(k.source(), fallback);
    if (name == "include") continue;
    if (!is_section(name)) {
      if (v.is_table())
        fail(key_at, name, "unknown section [" + name + "] (did you mean [" + closest_section(name) + "]?)");
      fail(key_at, name, "unknown key (did you mean " + closest_key(name) + "?)");
    }
    const toml::table* sec = v.as_table();
    if (!sec) fail(key_at, name, "expected a table [" + name + "], got " + node_type_name(v));
    section_at_[name] = where(sec->source(), key_at);
    for (auto&& [k2, v2] : *sec) {
      const std::string at2 = where(k2.source(), fallback);
      const std::string dotted = current_name(name + "." + std::string(k2.str()), at2);
      if (!find_key(dotted)) fail(at2, dotted, "unknown key (did you mean " + closest_key(dotted) + "?)");
      settings_[dotted] = Setting{&v2, at2, where(v2.source(), at2)};
    }
  }
}

void Loader::apply_override(const std::string& arg) {
  const std::string site = "--set '" + arg + "'";
  const size_t eq = arg.find('=');
  if (eq == std::string::npos) throw ConfigError(site + ": expected section.key=value");
  auto trim = [](std::string s) {
    s.erase(0, s.find_first_not_of(" \t"));
    s.erase(s.find_last_not_of(" \t") + 1);
    return s;
  };
  const std::string name = current_name(trim(arg.substr(0, eq)), site), text = trim(arg.substr(eq + 1));
  const Key* key = find_key(name);
  if (!key) fail(site, name, "unknown key (did you mean " + closest_key(name) + "?)");
  const bool is_string = std::holds_alternative<std::string& (*)(Config&)>(key->field);
  auto doc = std::make_unique<toml::table>();
  try {
    *doc = parse_toml("v = " + text, site);
  } catch (const toml::parse_error& e) {
    if (!is_string) fail(site, name, "cannot parse '" + text + "' as a TOML value: " + description(e));
  }
  // Bare words are welcome for string keys: --set train.backend=cpu.
  if (is_string && !(doc->get("v") && doc->get("v")->is_string())) {
    doc = std::make_unique<toml::table>();
    doc->insert("v", text);
  }
  settings_[name] = Setting{doc->get("v"), site, site};
  docs_.push_back(std::move(doc));
}

// ---- Typed reads with range checks -------------------------------------------------------------

void check_bounds(const Key& k, const std::string& at, double v, const std::string& shown) {
  if (!k.bounds.contains(v)) fail(at, k.name, "value " + shown + " is out of range: allowed " + k.bounds.text());
}

int64_t read_integer(const Key& k, const toml::node& n, const std::string& at, double lo, double hi) {
  const auto* i = n.as_integer();
  if (!i) fail(at, k.name, "expected an integer, got " + node_type_name(n));
  const int64_t v = i->get();
  check_bounds(k, at, static_cast<double>(v), std::to_string(v));
  if (static_cast<double>(v) < lo || static_cast<double>(v) > hi)
    fail(at, k.name, "value " + std::to_string(v) + " does not fit the field's type");
  return v;
}

void read_into(int& out, const Key& k, const Setting& s) {
  out = static_cast<int>(read_integer(k, *s.value, s.value_at, INT_MIN, INT_MAX));
}
void read_into(int64_t& out, const Key& k, const Setting& s) {
  out = read_integer(k, *s.value, s.value_at, -kInf, kInf);
}
void read_into(uint64_t& out, const Key& k, const Setting& s) {
  out = static_cast<uint64_t>(read_integer(k, *s.value, s.value_at, 0, kInf));
}
void read_into(double& out, const Key& k, const Setting& s) {
  if (const auto* i = s.value->as_integer()) out = static_cast<double>(i->get());
  else if (const auto* f = s.value->as_floating_point()) out = f->get();
  else fail(s.value_at, k.name, "expected a number, got " + node_type_name(*s.value));
  check_bounds(k, s.value_at, out, format_number(out));
  if (k.is_f32) {
    // 1e-300 is > 0 as a double but 0 as the float the kernels compute with (rotary_base: NaN at
    // step 1), and 1e39 is inf: the float must be finite and within the bounds too.
    const float f = static_cast<float>(out);
    if (!std::isfinite(f) || !k.bounds.contains(f))
      fail(s.value_at, k.name, "value " + format_number(out) + " becomes " + format_number(f) +
                                   " as the 32-bit float the kernels use, which is out of range: allowed " +
                                   (k.bounds.any() ? k.bounds.text() : std::string("finite")));
  }
}
void read_into(bool& out, const Key& k, const Setting& s) {
  const auto* b = s.value->as_boolean();
  if (!b) fail(s.value_at, k.name, "expected true or false, got " + node_type_name(*s.value));
  out = b->get();
}
void read_into(std::string& out, const Key& k, const Setting& s) {
  const auto* str = s.value->as_string();
  if (!str) fail(s.value_at, k.name, "expected a string, got " + node_type_name(*s.value));
  out = str->get();
  if (!k.choices.empty() && std::find(k.choices.begin(), k.choices.end(), out) == k.choices.end()) {
    std::string list;
    for (const std::string& c : k.choices) list += (list.empty() ? "" : ", ") + c;
    fail(s.value_at, k.name, "'" + out + "' is not one of: " + list);
  }
}
void read_into(std::vector<int>& out, const Key& k, const Setting& s) {
  const auto* arr = s.value->as_array();
  if (!arr) fail(s.value_at, k.name, "expected a list of integers, got " + node_type_name(*s.value));
  out.clear();
  for (const toml::node& n : *arr)
    out.push_back(static_cast<int>(read_integer(k, n, where(n.source(), s.value_at), INT_MIN, INT_MAX)));
}

// ---- Cross-key validation ----------------------------------------------------------------------

std::string Loader::at(const std::string& key) const {
  if (auto it = settings_.find(key); it != settings_.end()) return it->second.value_at;
  if (auto it = section_at_.find(key.substr(0, key.find('.'))); it != section_at_.end()) return it->second;
  return top_ + ":1:1";
}

// Checks that need several keys. Each error points at the key most likely to be the mistake.
void check_relations(const Config& c, const std::function<std::string(const std::string&)>& at) {
  const ModelSection& m = c.model;
  if (m.d_model % m.heads != 0)
    fail(at("model.d_model"), "model.d_model", std::to_string(m.d_model) + " is not a multiple of model.heads = " +
                                                   std::to_string(m.heads));
  const int hd = m.d_model / m.heads, rot = static_cast<int>(hd * m.rotary_pct);
  if (rot % 2 != 0)
    fail(at("model.rotary_pct"), "model.rotary_pct", "head_dim " + std::to_string(hd) + " x " +
                                                         format_number(m.rotary_pct) + " = " + std::to_string(rot) +
                                                         " rotary dims, which must be even");
  const int kvh = c.kv.kv_heads ? c.kv.kv_heads : m.heads;
  if (kvh > m.heads || m.heads % kvh != 0)
    fail(at("kv.kv_heads"), "kv.kv_heads", std::to_string(kvh) + " does not divide model.heads = " +
                                               std::to_string(m.heads));
  if (c.kv.owners.empty() && c.kv.kv_layers > m.layers)
    fail(at("kv.kv_layers"), "kv.kv_layers", std::to_string(c.kv.kv_layers) + " exceeds model.layers = " +
                                                 std::to_string(m.layers));
  if (!c.kv.owners.empty()) {
    try {
      KvPlan::from_owners(m.layers, c.kv.owners, kvh);
    } catch (const ConfigError& e) {
      fail(at("kv.owners"), "kv.owners", e.what());
    }
  }
  if (c.train.seq_len > m.max_seq_len)
    fail(at("train.seq_len"), "train.seq_len", std::to_string(c.train.seq_len) + " exceeds model.max_seq_len = " +
                                                   std::to_string(m.max_seq_len));
  // Megatron's split: each tp rank holds whole query heads and a slice of the MLP; KV heads are
  // split when kv_heads >= tp and replicated when fewer (DESIGN §3b).
  const int tp = c.parallel.tp, ffn = m.ffn ? m.ffn : 4 * m.d_model;
  if (m.heads % tp != 0 || ffn % tp != 0 || (kvh >= tp ? kvh % tp : tp % kvh) != 0)
    fail(at("parallel.tp"), "parallel.tp", std::to_string(tp) + " must divide model.heads = " +
                                               std::to_string(m.heads) + " and the MLP width " + std::to_string(ffn) +
                                               ", and divide or be a multiple of kv_heads = " + std::to_string(kvh));
  // Anything ModelSpec still rejects is reported at the [kv] section, the plan's home.
  try {
    (void)c.spec();
  } catch (const ConfigError& e) {
    throw ConfigError(at("kv") + ": kv: " + e.what());
  }
}

// Settings that are legal but contradict each other, or a run that cannot do what it says: a
// warning at the key that loses. Only for configs a user wrote (load_config), not for the resolved
// copy inside a checkpoint, which spells out every key.
void Loader::warn_conflicts(const Config& c) const {
  auto set = [this](const std::string& key) { return settings_.count(key) > 0; };
  if (set("kv.kv_layers") && !c.kv.owners.empty())
    log::warn(at("kv.kv_layers") + ": kv.kv_layers = " + std::to_string(c.kv.kv_layers) +
              " is ignored: kv.owners is set (" + at("kv.owners") + ")");
  if (c.data.val_fraction > 0 && !c.data.val_path.empty())
    log::warn(at("data.val_fraction") + ": data.val_fraction = " + format_number(c.data.val_fraction) +
              " is ignored: data.val_path is set (" + at("data.val_path") + "), all of data.path trains");
  const int64_t warm = warmup_steps(c.optim, c.train.steps);
  if (warm >= c.train.steps && c.optim.lr > 0) {
    const std::string key = c.optim.warmup_steps >= 0 ? "optim.warmup_steps" : "optim.warmup_fraction";
    log::warn(at(key) + ": warmup of " + std::to_string(warm) + " steps is not shorter than the run (train.steps = " +
              std::to_string(c.train.steps) + "): the learning rate never reaches optim.lr and never decays");
  }
}

Config Loader::build(const std::string& source) const {
  Config c;
  for (const Key& k : schema()) {
    auto it = settings_.find(k.name);
    if (it == settings_.end()) {
      if (k.is_required) fail(at(k.name), k.name, "missing required key (" + k.doc + ")");
      continue;
    }
    std::visit([&](auto get) { read_into(get(c), k, it->second); }, k.field);
  }
  c.source = source;
  check_relations(c, [this](const std::string& key) { return at(key); });
  return c;
}

}  // namespace

// ---- Public API --------------------------------------------------------------------------------

ModelSpec Config::spec() const {
  const std::string where = source.empty() ? "config" : source;
  ModelSpec s;
  s.layers = model.layers;
  s.d_model = model.d_model;
  s.heads = model.heads;
  s.vocab = model.vocab_size;
  s.max_seq_len = model.max_seq_len;
  s.rotary_pct = model.rotary_pct;
  s.rotary_base = model.rotary_base;
  s.ln_eps = model.ln_eps;
  s.ffn = model.ffn ? model.ffn : 4 * model.d_model;
  const int kvh = kv.kv_heads ? kv.kv_heads : model.heads;
  try {
    s.kv = kv.owners.empty() ? KvPlan::from_kv_layers(model.layers, kv.kv_layers ? kv.kv_layers : model.layers, kvh)
                             : KvPlan::from_owners(model.layers, kv.owners, kvh);
  } catch (const ConfigError& e) {
    throw ConfigError(where + ": " + e.what());
  }
  s.kv.rope_shared_keys = kv.rope_shared_keys;
  s.validate(where);
  return s;
}

Config load_config(const std::string& file, const std::vector<std::string>& overrides) {
  Loader l;
  l.load_file(file, "");
  for (const std::string& o : overrides) l.apply_override(o);
  Config c = l.build(file);
  l.warn_conflicts(c);
  return c;
}

Config config_from_toml_string(const std::string& toml, const std::string& source_name) {
  Loader l;
  l.load_text(toml, source_name);
  return l.build(source_name);
}

std::string config_to_toml(const Config& c) {
  std::string out;
  if (!c.source.empty()) out += "# resolved from " + c.source + "\n";
  for (const Section& s : sections()) {
    out += std::string(out.empty() ? "" : "\n") + "[" + s.name + "]\n";
    for (const Key& k : schema())
      if (k.section() == s.name) out += k.leaf() + " = " + format_value(k, c) + "\n";
  }
  return out;
}

std::string config_doc_markdown() {
  auto cell = [](std::string s) {  // a pipe would end the table cell
    for (size_t p = 0; (p = s.find('|', p)) != std::string::npos; p += 2) s.replace(p, 1, "\\|");
    return s;
  };
  const Config defaults;
  std::string out =
      "Generated from the schema in `core/config.cpp` by `mlkv-train --config-doc`; do not edit by hand.\n\n"
      "Top level: `include = \"base.toml\"` or a list of files, relative to the including file, loaded "
      "first; keys set by the including file win.\n";
  for (const Section& s : sections()) {
    out += std::string("\n### [") + s.name + "]\n\n" + s.doc + "\n\n";
    out += "| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n";
    for (const Key& k : schema()) {
      if (k.section() != s.name) continue;
      std::string allowed = k.bounds.text();
      for (const std::string& c : k.choices) allowed += (allowed.empty() ? "`" : ", `") + c + "`";
      const std::string def = k.is_required ? "**required**" : "`" + format_value(k, defaults) + "`";
      out += "| `" + k.name + "` | " + type_name(k) + " | " + cell(def) + " | " + cell(allowed) + " | " +
             cell(k.doc) + " |\n";
    }
  }
  return out;
}

}  // namespace mlkv
