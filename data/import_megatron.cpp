// Megatron-LM indexed dataset importer. Layout of PREFIX.idx (little-endian):
//   magic "MMIDIDX\0\0" (9 bytes) | version u64 = 1 | dtype code u8 | sequences u64 S |
//   doc index length u64 D | sizes i32[S] | byte pointers i64[S] | doc index i64[D]
// PREFIX.bin holds the tokens; sequence i is sizes[i] elements at byte pointers[i].
// The doc index lists the first sequence of each document (and S at the end).
#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/errors.h"
#include "data/import.h"
#include "data/mapped_file.h"

namespace mlkv::data {

namespace {

struct DtypeInfo {
  const char* name;
  size_t bytes;
  bool is_integer;
};

const DtypeInfo* dtype_info(int code) {
  static const DtypeInfo kTable[] = {
      {"uint8", 1, true},    {"int8", 1, true},     {"int16", 2, true},  {"int32", 4, true},
      {"int64", 8, true},    {"float64", 8, false}, {"float32", 4, false}, {"uint16", 2, true}};
  return code >= 1 && code <= 8 ? &kTable[code - 1] : nullptr;
}

// Reads element i of a sequence as a signed 64-bit value.
int64_t load_token(const MappedFile& bin, size_t offset, int code) {
  switch (code) {
    case 1: return bin.load<uint8_t>(offset);
    case 2: return bin.load<int8_t>(offset);
    case 3: return bin.load<int16_t>(offset);
    case 4: return bin.load<int32_t>(offset);
    case 5: return bin.load<int64_t>(offset);
    default: return bin.load<uint16_t>(offset);
  }
}

std::string strip_extension(const std::string& prefix) {
  for (const char* ext : {".idx", ".bin"}) {
    size_t n = std::strlen(ext);
    if (prefix.size() > n && prefix.compare(prefix.size() - n, n, ext) == 0) {
      return prefix.substr(0, prefix.size() - n);
    }
  }
  return prefix;
}

}  // namespace

const char* megatron_dtype_name(int code) {
  const DtypeInfo* info = dtype_info(code);
  return info ? info->name : nullptr;
}

ImportReport import_megatron(const std::string& prefix_in, const std::string& out_dir,
                             ShardWriterOptions writer_options, int64_t fixed_length) {
  const std::string prefix = strip_extension(prefix_in);
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  MappedFile idx(idx_path);
  auto fail = [&](const std::string& file, uint64_t offset, const std::string& what) {
    throw DataError(file + ": byte offset " + std::to_string(offset) + ": " + what);
  };
  constexpr size_t kHeader = 9 + 8 + 1 + 8 + 8;
  if (idx.size() < kHeader) {
    fail(idx_path, idx.size(), "truncated header (" + std::to_string(idx.size()) +
                                   " bytes, need " + std::to_string(kHeader) + ")");
  }
  if (std::memcmp(idx.data(), "MMIDIDX\0\0", 9) != 0) {
    fail(idx_path, 0, "bad magic (not a Megatron MMIDIDX index file)");
  }
  uint64_t version = idx.load<uint64_t>(9);
  if (version != 1) fail(idx_path, 9, "index version " + std::to_string(version) + ", expected 1");
  const int code = idx.load<uint8_t>(17);
  const DtypeInfo* dtype = dtype_info(code);
  if (dtype == nullptr) fail(idx_path, 17, "unknown dtype code " + std::to_string(code));
  if (!dtype->is_integer) {
    fail(idx_path, 17, "dtype code " + std::to_string(code) + " (" + dtype->name +
                           ") is not an integer token type");
  }
  const uint64_t num_sequences = idx.load<uint64_t>(18);
  const uint64_t doc_index_len = idx.load<uint64_t>(26);
  const uint64_t sizes_at = kHeader, pointers_at = sizes_at + 4 * num_sequences,
                 docs_at = pointers_at + 8 * num_sequences,
                 expected_size = docs_at + 8 * doc_index_len;
  if (num_sequences > idx.size() || doc_index_len > idx.size() || expected_size != idx.size()) {
    fail(idx_path, std::min<uint64_t>(idx.size(), expected_size),
         "file is " + std::to_string(idx.size()) + " bytes but its header (" +
             std::to_string(num_sequences) + " sequences, doc index of " +
             std::to_string(doc_index_len) + ") needs " + std::to_string(expected_size) +
             " (truncated or corrupt)");
  }
  MappedFile bin(bin_path, " (the index " + idx_path + " needs its .bin beside it)");

  // Pass 1 over the index (small next to the .bin): bounds, doc index, fixed length.
  int64_t common_size = num_sequences > 0 ? idx.load<int32_t>(sizes_at) : 0;
  for (uint64_t i = 0; i < num_sequences; ++i) {
    int64_t size = idx.load<int32_t>(sizes_at + 4 * i);
    int64_t pointer = idx.load<int64_t>(pointers_at + 8 * i);
    if (size < 0) fail(idx_path, sizes_at + 4 * i, "negative size of sequence " + std::to_string(i));
    if (pointer < 0 || static_cast<uint64_t>(pointer) + uint64_t(size) * dtype->bytes > bin.size()) {
      fail(bin_path, static_cast<uint64_t>(std::max<int64_t>(pointer, 0)),
           "sequence " + std::to_string(i) + " (" + std::to_string(size) + " tokens at byte " +
               std::to_string(pointer) + ") runs past the end of the file (" +
               std::to_string(bin.size()) + " bytes; truncated .bin?)");
    }
    if (size != common_size) common_size = -1;
  }
  int64_t previous_doc = 0;
  for (uint64_t d = 0; d < doc_index_len; ++d) {
    int64_t first = idx.load<int64_t>(docs_at + 8 * d);
    if (first < previous_doc || static_cast<uint64_t>(first) > num_sequences) {
      fail(idx_path, docs_at + 8 * d,
           "document index entry " + std::to_string(d) + " = " + std::to_string(first) +
               " is out of order or past the " + std::to_string(num_sequences) + " sequences");
    }
    previous_doc = first;
  }
  ImportReport report;
  report.dtype = dtype->name;
  report.sequences = num_sequences;
  if (fixed_length > 0 && common_size != fixed_length) {
    throw DataError(idx_path + ": sequences are not all " + std::to_string(fixed_length) +
                    " tokens long");
  }
  if (fixed_length != 0 && common_size > 0 && num_sequences > 1) {
    report.sequence_length = common_size;
    writer_options.sequence_length = common_size;
    writer_options.shard_tokens =
        std::max<int64_t>(1, writer_options.shard_tokens / common_size) * common_size;
  }
  writer_options.out_dir = out_dir;
  if (writer_options.source.empty()) writer_options.source = "megatron:" + prefix;
  ShardWriter writer(writer_options);

  // Pass 2: stream the tokens sequence by sequence.
  std::vector<uint32_t> tokens;
  uint64_t next_doc = 0;
  size_t released_upto = 0;
  const int64_t vocab = writer_options.vocab_size;
  for (uint64_t i = 0; i < num_sequences; ++i) {
    bool starts_document = false;
    while (next_doc < doc_index_len && uint64_t(idx.load<int64_t>(docs_at + 8 * next_doc)) == i) {
      starts_document = true;
      ++next_doc;
    }
    if (starts_document) {
      writer.end_document();
      ++report.documents;
    }
    const int64_t size = idx.load<int32_t>(sizes_at + 4 * i);
    const size_t pointer = static_cast<size_t>(idx.load<int64_t>(pointers_at + 8 * i));
    tokens.resize(static_cast<size_t>(size));
    for (int64_t t = 0; t < size; ++t) {
      size_t offset = pointer + static_cast<size_t>(t) * dtype->bytes;
      int64_t value = load_token(bin, offset, code);
      if (value < 0 || value >= vocab) {
        fail(bin_path, offset, "token " + std::to_string(value) + " (sequence " +
                                   std::to_string(i) + ", element " + std::to_string(t) +
                                   ") is outside [0, vocab_size " + std::to_string(vocab) + ")");
      }
      tokens[static_cast<size_t>(t)] = static_cast<uint32_t>(value);
    }
    writer.append(std::span<const uint32_t>(tokens));
    report.tokens += static_cast<uint64_t>(size);
    // Drop pages already consumed so a sequential import keeps a small resident set.
    size_t end = pointer + static_cast<size_t>(size) * dtype->bytes;
    if (end > released_upto + (size_t{64} << 20)) {
      bin.release(released_upto, end);
      released_upto = end;
    }
  }
  report.shards = writer.finish();
  return report;
}

}  // namespace mlkv::data
