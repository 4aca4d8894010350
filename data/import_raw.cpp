// Flat token file importer: little-endian uint16 or uint32 elements, nothing else.
#include <algorithm>

#include "core/errors.h"
#include "data/import.h"
#include "data/mapped_file.h"

namespace mlkv::data {

ImportReport import_raw(const std::string& file, const std::string& dtype,
                        const std::string& out_dir, ShardWriterOptions writer_options,
                        bool docs_from_eod) {
  if (dtype != "uint16" && dtype != "uint32") {
    throw ConfigError("import-raw: --dtype must be uint16 or uint32, got '" + dtype + "'");
  }
  const size_t element = dtype == "uint16" ? 2 : 4;
  MappedFile input(file);
  if (input.size() % element != 0) {
    throw DataError(file + ": byte offset " + std::to_string(input.size() / element * element) +
                    ": file size " + std::to_string(input.size()) +
                    " is not a multiple of the " + std::to_string(element) +
                    "-byte element (wrong --dtype or truncated file?)");
  }
  writer_options.out_dir = out_dir;
  if (writer_options.source.empty()) writer_options.source = "raw:" + file;
  if (!docs_from_eod) writer_options.doc_offsets = false;  // no document boundaries known
  ShardWriter writer(writer_options);
  ImportReport report;
  report.dtype = dtype;
  const uint64_t count = input.size() / element;
  const int64_t vocab = writer_options.vocab_size;
  const int64_t eod = writer_options.eod_id;
  std::vector<uint32_t> block;
  constexpr uint64_t kBlock = uint64_t{1} << 20;
  bool in_document = false;
  for (uint64_t start = 0; start < count; start += kBlock) {
    const uint64_t n = std::min(kBlock, count - start);
    block.clear();
    for (uint64_t i = 0; i < n; ++i) {
      size_t offset = static_cast<size_t>((start + i) * element);
      uint32_t value = element == 2 ? input.load<uint16_t>(offset) : input.load<uint32_t>(offset);
      if (value >= static_cast<uint64_t>(vocab)) {
        throw DataError(file + ": byte offset " + std::to_string(offset) + ": token " +
                        std::to_string(value) + " is >= vocab_size " + std::to_string(vocab));
      }
      if (docs_from_eod) {
        if (!in_document) ++report.documents;
        in_document = true;
        block.push_back(value);
        if (static_cast<int64_t>(value) == eod) {
          writer.append(std::span<const uint32_t>(block));
          block.clear();
          writer.end_document();
          in_document = false;
        }
      } else {
        block.push_back(value);
      }
    }
    writer.append(std::span<const uint32_t>(block));
    if (start % (uint64_t{64} << 20) == 0) input.release(0, static_cast<size_t>(start * element));
  }
  report.tokens = count;
  report.sequences = count > 0 ? 1 : 0;
  report.shards = writer.finish();
  return report;
}

}  // namespace mlkv::data
