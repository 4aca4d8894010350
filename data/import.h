// Importers into shards: Megatron-LM indexed datasets (.idx/.bin, "MMIDIDX" version 1) and flat
// little-endian token files. Both stream their input through a memory map and never hold more
// than one sequence (or one block) in memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/shard_writer.h"

namespace mlkv::data {

struct ImportReport {
  std::vector<std::string> shards;
  uint64_t sequences = 0;
  uint64_t documents = 0;
  uint64_t tokens = 0;
  int64_t sequence_length = 0;  // fixed sequence length detected (0: variable)
  std::string dtype;            // source element type
};

// Element types of Megatron's dtype codes (1..8); nullptr for an unknown code.
const char* megatron_dtype_name(int code);

// Imports PREFIX.idx + PREFIX.bin (PREFIX may also be given with either extension).
// `writer` supplies everything but out_dir/source, which come from the arguments.
// fixed_length: -1 detects fixed-length sequences (all sizes equal: Pythia's pre-shuffled
// 2049-token files) and then records sequence_length and rounds shard_tokens down to a multiple
// of it; 0 never does; > 0 requires that length. Throws DataError naming file and byte offset.
ImportReport import_megatron(const std::string& prefix, const std::string& out_dir,
                             ShardWriterOptions writer, int64_t fixed_length = -1);

// Imports a flat file of uint16 or uint32 little-endian tokens ("uint16" | "uint32").
// docs_from_eod: a document ends after every eod_id token (recorded in /doc_offsets).
ImportReport import_raw(const std::string& file, const std::string& dtype,
                        const std::string& out_dir, ShardWriterOptions writer,
                        bool docs_from_eod);

// Writes all tokens of a dataset, shard after shard, as a flat little-endian file of `dtype`
// ("uint16", "uint32", or "" for the shards' own width). Returns the number of tokens.
int64_t export_raw(const std::string& dataset, const std::string& file, const std::string& dtype);

}  // namespace mlkv::data
