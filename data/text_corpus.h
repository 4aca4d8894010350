// Tokenizes text files into shards: .txt (one document per file, per blank-line separated
// paragraph, or per line) and .jsonl (one JSON object per line, its "text" field a document).
// Each document's ids are followed by the EOD id, as Megatron's --append-eod does.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/bpe_tokenizer.h"
#include "data/import.h"
#include "data/shard_writer.h"

namespace mlkv::data {

enum class TextSplit { kFile, kParagraph, kLine };

// Parses "file" | "paragraph" | "line"; throws ConfigError otherwise.
TextSplit parse_text_split(const std::string& name);

// Tokenizes every input (by extension: .jsonl, anything else is text) in order. writer must
// carry vocab_size/eod_id; out_dir is set here. Empty documents are skipped. Throws DataError
// naming file and byte offset (or line) for invalid UTF-8 or malformed JSON.
ImportReport tokenize_files(const BpeTokenizer& tokenizer, const std::vector<std::string>& inputs,
                            const std::string& out_dir, ShardWriterOptions writer,
                            TextSplit split, const std::string& jsonl_field = "text");

}  // namespace mlkv::data
