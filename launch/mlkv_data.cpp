// mlkv-data: builds, checks and measures token shards (see data/README.md).
//   import-megatron | import-raw | tokenize | inspect | verify | validate | bench |
//   make-synthetic | encode
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "data/bench.h"
#include "data/bpe_tokenizer.h"
#include "data/dataset.h"
#include "data/import.h"
#include "data/inspect.h"
#include "data/shard_writer.h"
#include "data/text_corpus.h"

namespace {

using mlkv::ConfigError;
namespace data = mlkv::data;

const char* kUsage = R"(usage: mlkv-data COMMAND [ARGS]   (mlkv-data COMMAND --help for details)

commands:
  import-megatron PREFIX OUT   Megatron .idx/.bin (documents or Pythia 2049-token sequences) -> shards
  import-raw FILE OUT          flat uint16/uint32 token file -> shards
  tokenize INPUT... OUT        .txt/.jsonl through a tokenizer.json (byte-level BPE) -> shards
  inspect DIR                  shards, tokens, documents, dtype, vocab, histogram, first tokens
  verify DIR                   read every chunk, check every id < vocab and the offsets
  validate DIR                 the trainer's start-up check for a vocab and seq_len
  bench DIR                    reader throughput (tokens/s of this process)
  make-synthetic OUT           synthetic shards for the benchmark
  export-raw DIR FILE          all tokens, in shard order, as a flat uint16/uint32 file
  encode FILE                  print the ids of a text (or .jsonl) file, one JSON array per document

exit codes: 0 ok, 1 runtime failure, 2 bad input (data, flags)
)";

const char* kShardFlags = R"(shard options:
  --shard-tokens N     tokens per shard file (default 134217728 = 2^27); a last shard under
                       half of N is folded into the previous one
  --vocab V            vocab_size attribute; every id must be < V (default 50277, GPT-NeoX-20B)
  --eod ID             eod_id attribute (default 0 = <|endoftext|>)
  --tokenizer-name S   tokenizer attribute (default EleutherAI/gpt-neox-20b)
  --compress L         gzip level 0-9 with byte shuffle (default 0 = off)
  --chunk-tokens N     HDF5 chunk (default 1048576, or 65536 when compressed)
  --prefix NAME        shard file prefix (default shard: OUT/shard-00000.h5 ...)
  --no-doc-offsets     do not write /doc_offsets
)";

const std::map<std::string, std::string> kHelp = {
    {"import-megatron",
     std::string(R"(usage: mlkv-data import-megatron PREFIX OUT [options]
Reads PREFIX.idx and PREFIX.bin (Megatron MMIDIDX v1; dtype codes 1 uint8, 2 int8, 3 int16,
4 int32, 5 int64, 8 uint16; float codes 6/7 are refused) and writes the tokens, in sequence
order, to shards under OUT. Document starts come from the .idx document index.
  --sequence-length auto|0|N   fixed-length sequences (Pythia pre-shuffled: 2049). auto (default)
                       records it when all sequences have one length, and then rounds
                       --shard-tokens down to a multiple of it so that sample i = sequence i
)") + kShardFlags},
    {"import-raw", std::string(R"(usage: mlkv-data import-raw FILE OUT --dtype uint16|uint32 [options]
Reads a flat little-endian token file.
  --dtype T            uint16 or uint32 (required)
  --docs-from-eod      a document ends after every EOD token (writes /doc_offsets)
)") + kShardFlags},
    {"tokenize", std::string(R"(usage: mlkv-data tokenize --tokenizer tokenizer.json INPUT... OUT [options]
Tokenizes .txt and .jsonl files (in the given order) and appends the EOD id after every
document. --vocab and --eod default to the tokenizer's size and its <|endoftext|> id.
  --tokenizer FILE     HF tokenizer.json (byte-level BPE; data/tokenizer/gpt-neox-20b.json)
  --split MODE         .txt documents: file (default: a file is a document), paragraph
                       (blank-line separated) or line
  --field NAME         .jsonl text field (default text)
)") + kShardFlags},
    {"inspect", R"(usage: mlkv-data inspect DIR [--tokenizer tokenizer.json] [--histogram-tokens N] [--first N]
Prints shards, tokens, documents, dtype, vocab, eod, a histogram of the first N tokens
(default 67108864) and the first tokens (decoded when --tokenizer is given).
)"},
    {"verify", R"(usage: mlkv-data verify DIR [--vocab V]
Reads every chunk of every shard; checks ids < V (default: each shard's vocab_size), the
max_token_id/num_tokens attributes and /doc_offsets. Exit 2 when anything is wrong.
)"},
    {"validate", R"(usage: mlkv-data validate DIR --vocab V --seq-len N
The check the trainer runs before training (headers, shard lengths >= N+1, ids < V).
)"},
    {"bench", R"(usage: mlkv-data bench DIR [--seq-len 2048] [--batch 64] [--seconds 10] [--prefetch 4]
Reader throughput of this process: sequential 1Mi-token reads, then shuffled Loader batches.
)"},
    {"make-synthetic", R"(usage: mlkv-data make-synthetic OUT --tokens N [--compress L] [--seed S] [shard options]
Writes N synthetic tokens (Zipf-like ids, an EOD about every 1024 tokens) for `bench`.
)"},
    {"export-raw", R"(usage: mlkv-data export-raw DIR FILE [--dtype uint16|uint32]
Writes every token of the dataset, shard after shard, as little-endian uint16 or uint32
(default: the shards' own width). The inverse of import-raw.
)"},
    {"encode", R"(usage: mlkv-data encode --tokenizer tokenizer.json FILE [--jsonl]
Prints the ids of FILE as one JSON array (or, with --jsonl, one array per line's "text").
)"},
};

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;
  std::set<std::string> switches;

  bool has(const std::string& key) const { return values.count(key) || switches.count(key); }
  std::string get(const std::string& key, const std::string& fallback = "") const {
    auto it = values.find(key);
    return it == values.end() ? fallback : it->second;
  }
  int64_t get_int(const std::string& key, int64_t fallback) const {
    auto it = values.find(key);
    if (it == values.end()) return fallback;
    try {
      size_t used = 0;
      long long value = std::stoll(it->second, &used, 0);
      if (used != it->second.size()) throw std::invalid_argument("trailing");
      return value;
    } catch (const std::exception&) {
      throw ConfigError("--" + key + " expects an integer, got '" + it->second + "'");
    }
  }
  double get_double(const std::string& key, double fallback) const {
    auto it = values.find(key);
    if (it == values.end()) return fallback;
    try {
      return std::stod(it->second);
    } catch (const std::exception&) {
      throw ConfigError("--" + key + " expects a number, got '" + it->second + "'");
    }
  }
};

// Flags in `valued` take a value; those in `bare` do not; anything else is an error.
Args parse(int argc, char** argv, const std::set<std::string>& valued,
           const std::set<std::string>& bare) {
  Args args;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      args.positional.push_back(arg);
      continue;
    }
    std::string key = arg.substr(2), value;
    size_t eq = key.find('=');
    bool inline_value = eq != std::string::npos;
    if (inline_value) value = key.substr(eq + 1), key = key.substr(0, eq);
    if (bare.count(key) && !inline_value) {
      args.switches.insert(key);
    } else if (valued.count(key)) {
      if (!inline_value) {
        if (i + 1 >= argc) throw ConfigError("--" + key + " needs a value");
        value = argv[++i];
      }
      args.values[key] = value;
    } else {
      throw ConfigError("unknown option --" + key + " (see mlkv-data " + argv[1] + " --help)");
    }
  }
  return args;
}

const std::set<std::string> kShardValued = {"shard-tokens", "vocab", "eod", "tokenizer-name",
                                            "compress", "chunk-tokens", "prefix"};

std::set<std::string> with_shard_flags(std::set<std::string> flags) {
  flags.insert(kShardValued.begin(), kShardValued.end());
  return flags;
}

data::ShardWriterOptions shard_options(const Args& args, int64_t vocab, int64_t eod,
                                       const std::string& tokenizer) {
  data::ShardWriterOptions o;
  o.shard_tokens = args.get_int("shard-tokens", data::kDefaultShardTokens);
  o.vocab_size = args.get_int("vocab", vocab);
  o.eod_id = args.get_int("eod", eod);
  o.tokenizer = args.get("tokenizer-name", tokenizer);
  o.compress_level = static_cast<int>(args.get_int("compress", 0));
  o.chunk_tokens = args.get_int("chunk-tokens", 0);
  o.prefix = args.get("prefix", "shard");
  o.doc_offsets = !args.has("no-doc-offsets");
  return o;
}

void need_positional(const Args& args, size_t min, size_t max, const std::string& command) {
  if (args.positional.size() < min || args.positional.size() > max) {
    throw ConfigError(command + ": wrong number of arguments\n" + kHelp.at(command));
  }
}

void print_report(const data::ImportReport& report) {
  std::cout << "imported " << report.tokens << " tokens";
  if (report.documents > 0) std::cout << ", " << report.documents << " documents";
  if (report.sequence_length > 0) {
    std::cout << ", " << report.sequences << " sequences of " << report.sequence_length;
  }
  std::cout << " (" << report.dtype << ") into " << report.shards.size() << " shards\n";
  for (const std::string& shard : report.shards) std::cout << "  " << shard << "\n";
  if (report.tokens == 0) throw mlkv::DataError("no tokens in the input: no shard written");
}

constexpr int64_t kNeoxVocab = 50277;
const char* kNeoxName = "EleutherAI/gpt-neox-20b";

int run(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::cout << kUsage;
    return argc < 2 ? mlkv::kExitBadInput : 0;
  }
  const std::string command = argv[1];
  if (!kHelp.count(command)) {
    std::cerr << "mlkv-data: unknown command '" << command << "'\n" << kUsage;
    return mlkv::kExitBadInput;
  }
  for (int i = 2; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::cout << kHelp.at(command);
      return 0;
    }
  }

  if (command == "import-megatron") {
    Args args = parse(argc, argv, with_shard_flags({"sequence-length"}), {"no-doc-offsets"});
    need_positional(args, 2, 2, command);
    std::string fixed = args.get("sequence-length", "auto");
    int64_t fixed_length = fixed == "auto" ? -1 : args.get_int("sequence-length", 0);
    auto report = data::import_megatron(args.positional[0], args.positional[1],
                                        shard_options(args, kNeoxVocab, 0, kNeoxName),
                                        fixed_length);
    print_report(report);
  } else if (command == "import-raw") {
    Args args = parse(argc, argv, with_shard_flags({"dtype"}), {"no-doc-offsets", "docs-from-eod"});
    need_positional(args, 2, 2, command);
    if (!args.has("dtype")) throw ConfigError("import-raw: --dtype uint16|uint32 is required");
    auto report = data::import_raw(args.positional[0], args.get("dtype"), args.positional[1],
                                   shard_options(args, kNeoxVocab, 0, kNeoxName),
                                   args.has("docs-from-eod"));
    print_report(report);
  } else if (command == "tokenize") {
    Args args = parse(argc, argv, with_shard_flags({"tokenizer", "split", "field"}),
                      {"no-doc-offsets"});
    need_positional(args, 2, 1u << 20, command);
    if (!args.has("tokenizer")) throw ConfigError("tokenize: --tokenizer FILE is required");
    auto tokenizer = data::BpeTokenizer::load(args.get("tokenizer"));
    std::vector<std::string> inputs(args.positional.begin(), args.positional.end() - 1);
    std::string name = std::filesystem::path(args.get("tokenizer")).stem().string();
    auto options = shard_options(args, tokenizer.vocab_size(),
                                 tokenizer.token_id("<|endoftext|>"), name);
    options.source = "tokenize";
    auto report = data::tokenize_files(tokenizer, inputs, args.positional.back(), options,
                                       data::parse_text_split(args.get("split", "file")),
                                       args.get("field", "text"));
    print_report(report);
  } else if (command == "inspect") {
    Args args = parse(argc, argv, {"tokenizer", "histogram-tokens", "first"}, {});
    need_positional(args, 1, 1, command);
    data::InspectOptions options;
    options.histogram_tokens = args.get_int("histogram-tokens", options.histogram_tokens);
    options.first_tokens = static_cast<int>(args.get_int("first", options.first_tokens));
    std::optional<data::BpeTokenizer> tokenizer;
    if (args.has("tokenizer")) {
      tokenizer = data::BpeTokenizer::load(args.get("tokenizer"));
      options.tokenizer = &*tokenizer;
    }
    data::inspect_dataset(args.positional[0], options, std::cout);
  } else if (command == "verify") {
    Args args = parse(argc, argv, {"vocab"}, {});
    need_positional(args, 1, 1, command);
    auto result = data::verify_dataset(args.positional[0], args.get_int("vocab", 0), std::cout);
    return result.errors == 0 ? 0 : mlkv::kExitBadInput;
  } else if (command == "validate") {
    Args args = parse(argc, argv, {"vocab", "seq-len"}, {});
    need_positional(args, 1, 1, command);
    auto summary = data::validate_dataset(args.positional[0], args.get_int("vocab", 0),
                                          args.get_int("seq-len", 0));
    std::cout << "ok: " << summary.shards.size() << " shards, " << summary.total_tokens
              << " tokens\n";
  } else if (command == "bench") {
    Args args = parse(argc, argv, {"seq-len", "batch", "seconds", "prefetch"}, {});
    need_positional(args, 1, 1, command);
    data::BenchOptions options;
    options.path = args.positional[0];
    options.seq_len = args.get_int("seq-len", options.seq_len);
    options.batch = args.get_int("batch", options.batch);
    options.seconds = args.get_double("seconds", options.seconds);
    options.prefetch = static_cast<int>(args.get_int("prefetch", options.prefetch));
    data::bench_reader(options, std::cout);
  } else if (command == "make-synthetic") {
    Args args = parse(argc, argv, with_shard_flags({"tokens", "seed"}), {"no-doc-offsets"});
    need_positional(args, 1, 1, command);
    if (!args.has("tokens")) throw ConfigError("make-synthetic: --tokens N is required");
    auto options = shard_options(args, kNeoxVocab, 0, "synthetic");
    options.out_dir = args.positional[0];
    options.source = "make-synthetic";
    data::make_synthetic(args.get_int("tokens", 0), options,
                         static_cast<uint64_t>(args.get_int("seed", 1)), std::cout);
  } else if (command == "export-raw") {
    Args args = parse(argc, argv, {"dtype"}, {});
    need_positional(args, 2, 2, command);
    int64_t written = data::export_raw(args.positional[0], args.positional[1], args.get("dtype"));
    std::cout << "wrote " << written << " tokens to " << args.positional[1] << "\n";
  } else if (command == "encode") {
    Args args = parse(argc, argv, {"tokenizer"}, {"jsonl"});
    need_positional(args, 1, 1, command);
    if (!args.has("tokenizer")) throw ConfigError("encode: --tokenizer FILE is required");
    auto tokenizer = data::BpeTokenizer::load(args.get("tokenizer"));
    std::ifstream in(args.positional[0], std::ios::binary);
    if (!in) throw mlkv::DataError(args.positional[0] + ": cannot open");
    auto print_ids = [&](const std::string& text) {
      nlohmann::json ids = tokenizer.encode(text);
      std::cout << ids.dump() << "\n";
    };
    if (args.has("jsonl")) {
      std::string line;
      while (std::getline(in, line)) {
        if (!line.empty()) print_ids(nlohmann::json::parse(line).at("text").get<std::string>());
      }
    } else {
      print_ids(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const mlkv::Error& e) {
    std::cerr << "mlkv-data: error: " << e.what() << "\n";
    return e.exit_code();
  } catch (const nlohmann::json::exception& e) {
    std::cerr << "mlkv-data: error: bad JSON input: " << e.what() << "\n";
    return mlkv::kExitBadInput;
  } catch (const std::exception& e) {
    std::cerr << "mlkv-data: error: " << e.what() << "\n";
    return mlkv::kExitFailure;
  }
}
