// inspect and verify reports.
#include "data/inspect.h"

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <map>
#include <unordered_map>

#include "core/errors.h"
#include "data/bpe_tokenizer.h"
#include "data/dataset.h"
#include "data/shard_reader.h"

namespace mlkv::data {

namespace {

std::string base_name(const std::string& path) {
  return std::filesystem::path(path).filename().string();
}

int64_t documents_of(const ShardInfo& s) {
  if (s.num_doc_pieces < 0) return -1;
  return s.num_doc_pieces - (s.first_doc_continues && s.num_doc_pieces > 0 ? 1 : 0);
}

std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '"') out += "\\\"";
    else out += c;
  }
  return out + "\"";
}

}  // namespace

void inspect_dataset(const std::string& path, const InspectOptions& options, std::ostream& out) {
  DatasetSummary summary = open_dataset(path);
  const auto& shards = summary.shards;
  int64_t documents = 0;
  bool has_docs = true;
  std::map<std::string, int> dtypes;
  for (const ShardInfo& s : shards) {
    int64_t d = documents_of(s);
    if (d < 0) has_docs = false;
    documents += std::max<int64_t>(d, 0);
    dtypes[token_type_name(s.dtype)]++;
  }
  out << "dataset:         " << path << "\n";
  out << "shards:          " << shards.size() << "\n";
  for (const ShardInfo& s : shards) {
    out << "  " << std::left << std::setw(24) << base_name(s.path) << std::right
        << " tokens " << std::setw(12) << s.num_tokens << "  docs " << std::setw(9)
        << (documents_of(s) < 0 ? std::string("-") : std::to_string(documents_of(s)))
        << "  " << token_type_name(s.dtype) << "  chunk " << s.chunk_tokens << "  gzip "
        << s.deflate_level << "  max id " << s.max_token_id << "\n";
  }
  const ShardInfo& first = shards.front();
  out << "tokens:          " << summary.total_tokens << "\n";
  out << "documents:       " << (has_docs ? std::to_string(documents) : std::string("unknown"))
      << "\n";
  out << "dtype:           ";
  for (const auto& [name, count] : dtypes) out << name << " (" << count << " shards) ";
  out << "\n";
  out << "vocab_size:      " << summary.vocab_size << "\n";
  out << "eod_id:          " << summary.eod_id << "\n";
  out << "tokenizer:       " << first.tokenizer << "\n";
  out << "format_version:  " << first.format_version << "\n";
  out << "sequence_length: " << summary.sequence_length
      << (summary.sequence_length > 0 ? " (fixed-length sequences)" : " (free text)") << "\n";
  out << "source:          " << first.source << "\n";

  // Histogram over the first histogram_tokens tokens.
  std::unordered_map<int64_t, int64_t> counts;
  std::vector<int64_t> buckets(8, 0);
  const int64_t bucket_width = std::max<int64_t>(1, (summary.vocab_size + 7) / 8);
  std::vector<int32_t> tokens, first_tokens;
  int64_t scanned = 0;
  for (const ShardInfo& s : shards) {
    ShardReader reader(s.path);
    for (int64_t start = 0; start < s.num_tokens && scanned < options.histogram_tokens;) {
      int64_t n = std::min({int64_t{1} << 20, s.num_tokens - start,
                            options.histogram_tokens - scanned});
      tokens.resize(static_cast<size_t>(n));
      reader.read(start, n, tokens.data());
      for (int32_t t : tokens) {
        int64_t id = static_cast<uint32_t>(t);
        counts[id]++;
        buckets[static_cast<size_t>(std::min<int64_t>(7, id / bucket_width))]++;
        if (static_cast<int>(first_tokens.size()) < options.first_tokens) first_tokens.push_back(t);
      }
      start += n;
      scanned += n;
    }
  }
  out << "histogram:       " << scanned << " tokens scanned"
      << (scanned < summary.total_tokens ? " (a prefix)" : "") << ", " << counts.size()
      << " distinct ids\n";
  if (summary.eod_id >= 0 && scanned > 0) {
    out << "  eod share:     " << std::fixed << std::setprecision(4)
        << 100.0 * static_cast<double>(counts[summary.eod_id]) / static_cast<double>(scanned)
        << "% (mean " << std::setprecision(1)
        << (counts[summary.eod_id] > 0
                ? static_cast<double>(scanned) / static_cast<double>(counts[summary.eod_id])
                : 0.0)
        << " tokens per document)\n";
  }
  std::vector<std::pair<int64_t, int64_t>> top(counts.begin(), counts.end());
  std::sort(top.begin(), top.end(),
            [](auto& a, auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  out << "  top ids:      ";
  for (size_t i = 0; i < std::min<size_t>(10, top.size()); ++i) {
    out << " " << top[i].first;
    if (options.tokenizer) {
      int32_t id = static_cast<int32_t>(top[i].first);
      out << "=" << quoted(options.tokenizer->decode(std::span<const int32_t>(&id, 1)));
    }
    out << " (" << std::setprecision(2) << 100.0 * double(top[i].second) / double(scanned) << "%)";
  }
  out << "\n  id ranges:    ";
  for (size_t b = 0; b < buckets.size(); ++b) {
    out << " [" << int64_t(b) * bucket_width << "," << int64_t(b + 1) * bucket_width << "):"
        << std::setprecision(1) << 100.0 * double(buckets[b]) / double(std::max<int64_t>(1, scanned))
        << "%";
  }
  out << "\nfirst tokens:    [";
  for (size_t i = 0; i < first_tokens.size(); ++i) out << (i ? ", " : "") << first_tokens[i];
  out << "]\n";
  if (options.tokenizer) {
    out << "first text:      " << quoted(options.tokenizer->decode(first_tokens)) << "\n";
  }
}

VerifyResult verify_dataset(const std::string& path, int64_t vocab_size, std::ostream& out) {
  VerifyResult result;
  std::vector<std::string> files;
  try {
    files = list_shards(path);
  } catch (const DataError& e) {
    out << "ERROR " << e.what() << "\n";
    result.errors = 1;
    return result;
  }
  std::vector<int32_t> tokens;
  for (const std::string& file : files) {
    ++result.shards;
    int64_t errors_before = result.errors;
    try {
      ShardReader reader(file);
      const ShardInfo& info = reader.info();
      const int64_t limit = vocab_size > 0 ? vocab_size : info.vocab_size;
      const int64_t block = std::max<int64_t>(info.chunk_tokens, 1);
      int64_t max_id = -1, bad_count = 0, first_bad = -1, first_bad_id = 0;
      for (int64_t start = 0; start < info.num_tokens; start += block) {
        int64_t n = std::min(block, info.num_tokens - start);
        tokens.resize(static_cast<size_t>(n));
        try {
          reader.read(start, n, tokens.data());
        } catch (const DataError& e) {
          out << "ERROR " << e.what() << "\n";
          ++result.errors;
          continue;
        }
        for (int64_t i = 0; i < n; ++i) {
          int64_t id = static_cast<uint32_t>(tokens[static_cast<size_t>(i)]);
          max_id = std::max(max_id, id);
          if (id >= limit) {
            if (bad_count++ == 0) first_bad = start + i, first_bad_id = id;
          }
        }
      }
      result.tokens += info.num_tokens;
      if (bad_count > 0) {
        out << "ERROR " << file << ": token id " << first_bad_id << " at token offset "
            << first_bad << " is >= vocab_size " << limit << " (" << bad_count
            << " such tokens in this shard)\n";
        ++result.errors;
      }
      if (info.has_max_token_id && info.max_token_id != max_id && result.errors == errors_before) {
        out << "ERROR " << file << ": attribute max_token_id = " << info.max_token_id
            << " but the largest id is " << max_id << "\n";
        ++result.errors;
      }
      std::vector<uint64_t> offsets = reader.doc_offsets();
      for (size_t i = 0; i < offsets.size(); ++i) {
        bool bad = offsets[i] > static_cast<uint64_t>(info.num_tokens) ||
                   (i > 0 && offsets[i] < offsets[i - 1]) || (i == 0 && offsets[i] != 0) ||
                   (i + 1 == offsets.size() && offsets[i] != uint64_t(info.num_tokens));
        if (bad) {
          out << "ERROR " << file << ": /doc_offsets[" << i << "] = " << offsets[i]
              << " is inconsistent (tokens " << info.num_tokens << ")\n";
          ++result.errors;
          break;
        }
      }
      if (result.errors == errors_before) {
        out << "ok    " << file << "  " << info.num_tokens << " tokens, max id " << max_id
            << " < " << limit << "\n";
      }
    } catch (const DataError& e) {
      out << "ERROR " << e.what() << "\n";
      ++result.errors;
    }
  }
  out << (result.errors == 0 ? "verified: " : "FAILED: ") << result.shards << " shards, "
      << result.tokens << " tokens, " << result.errors << " errors\n";
  return result;
}

}  // namespace mlkv::data
