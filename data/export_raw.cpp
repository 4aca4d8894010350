// export-raw: dataset -> flat little-endian token file (the inverse of import-raw).
#include <cstdio>
#include <memory>

#include "core/errors.h"
#include "data/dataset.h"
#include "data/import.h"
#include "data/shard_reader.h"

namespace mlkv::data {

int64_t export_raw(const std::string& dataset, const std::string& file, const std::string& dtype) {
  DatasetSummary summary = open_dataset(dataset);
  std::string width = dtype;
  if (width.empty()) {
    width = "uint16";
    for (const ShardInfo& s : summary.shards) {
      if (s.dtype == TokenType::kUint32) width = "uint32";
    }
  }
  if (width != "uint16" && width != "uint32") {
    throw ConfigError("export-raw: --dtype must be uint16 or uint32, got '" + width + "'");
  }
  std::unique_ptr<FILE, int (*)(FILE*)> out(std::fopen(file.c_str(), "wb"), std::fclose);
  if (!out) throw IoError(file + ": cannot create");
  std::vector<int32_t> tokens;
  std::vector<uint16_t> narrow;
  int64_t written = 0;
  for (const ShardInfo& shard : summary.shards) {
    ShardReader reader(shard.path);
    for (int64_t start = 0; start < shard.num_tokens; start += int64_t{1} << 20) {
      int64_t n = std::min<int64_t>(int64_t{1} << 20, shard.num_tokens - start);
      tokens.resize(static_cast<size_t>(n));
      reader.read(start, n, tokens.data());
      size_t ok;
      if (width == "uint16") {
        narrow.resize(tokens.size());
        for (size_t i = 0; i < tokens.size(); ++i) {
          if (static_cast<uint32_t>(tokens[i]) > 0xFFFF) {
            throw DataError(shard.path + ": token offset " + std::to_string(start + int64_t(i)) +
                            ": id " + std::to_string(uint32_t(tokens[i])) +
                            " does not fit uint16");
          }
          narrow[i] = static_cast<uint16_t>(tokens[i]);
        }
        ok = std::fwrite(narrow.data(), 2, narrow.size(), out.get());
      } else {
        ok = std::fwrite(tokens.data(), 4, tokens.size(), out.get());
      }
      if (ok != tokens.size()) throw IoError(file + ": write failed");
      written += n;
    }
  }
  if (std::fflush(out.get()) != 0) throw IoError(file + ": write failed");
  return written;
}

}  // namespace mlkv::data
