// Text and JSONL documents -> BPE ids -> shards.
#include "data/text_corpus.h"

#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "core/errors.h"

namespace mlkv::data {

TextSplit parse_text_split(const std::string& name) {
  if (name == "file") return TextSplit::kFile;
  if (name == "paragraph") return TextSplit::kParagraph;
  if (name == "line") return TextSplit::kLine;
  throw ConfigError("--split must be file, paragraph or line, got '" + name + "'");
}

namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Calls emit(document, byte offset of its start) for each document of a text file.
void read_text_documents(const std::string& path, TextSplit split,
                         const std::function<void(const std::string&, uint64_t)>& emit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path + ": cannot open input file");
  if (split == TextSplit::kFile) {
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    emit(text, 0);
    return;
  }
  std::string line, paragraph;
  uint64_t offset = 0, paragraph_start = 0;
  auto flush = [&] {
    if (!paragraph.empty()) emit(paragraph, paragraph_start);
    paragraph.clear();
  };
  while (std::getline(in, line)) {
    uint64_t line_start = offset;
    offset += line.size() + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (split == TextSplit::kLine) {
      if (!line.empty()) emit(line, line_start);
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) {
      flush();
      continue;
    }
    if (paragraph.empty()) {
      paragraph_start = line_start;
    } else {
      paragraph.push_back('\n');
    }
    paragraph += line;
  }
  flush();
}

void read_jsonl_documents(const std::string& path, const std::string& field,
                          const std::function<void(const std::string&, uint64_t)>& emit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path + ": cannot open input file");
  std::string line;
  uint64_t line_number = 0, offset = 0;
  while (std::getline(in, line)) {
    ++line_number;
    uint64_t line_start = offset;
    offset += line.size() + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw DataError(path + ": line " + std::to_string(line_number) + " (byte offset " +
                      std::to_string(line_start) + "): not valid JSON: " + e.what());
    }
    if (!record.is_object() || !record.contains(field) || !record[field].is_string()) {
      throw DataError(path + ": line " + std::to_string(line_number) + " (byte offset " +
                      std::to_string(line_start) + "): no string field '" + field + "'");
    }
    emit(record[field].get_ref<const std::string&>(), line_start);
  }
}

}  // namespace

ImportReport tokenize_files(const BpeTokenizer& tokenizer, const std::vector<std::string>& inputs,
                            const std::string& out_dir, ShardWriterOptions writer_options,
                            TextSplit split, const std::string& jsonl_field) {
  if (writer_options.eod_id < 0) {
    throw ConfigError("tokenize: an EOD id is needed to separate documents");
  }
  writer_options.out_dir = out_dir;
  ShardWriter writer(writer_options);
  ImportReport report;
  std::vector<int32_t> ids;
  const int32_t eod = static_cast<int32_t>(writer_options.eod_id);
  for (const std::string& path : inputs) {
    auto emit = [&](const std::string& text, uint64_t start) {
      if (text.empty()) return;
      ids.clear();
      try {
        tokenizer.encode(text, ids);
      } catch (const DataError& e) {
        throw DataError(path + ": document at byte offset " + std::to_string(start) + ": " +
                        e.what());
      }
      ids.push_back(eod);
      writer.append(std::span<const int32_t>(ids));
      writer.end_document();
      ++report.documents;
      report.tokens += ids.size();
    };
    if (ends_with(path, ".jsonl")) {
      read_jsonl_documents(path, jsonl_field, emit);
    } else {
      read_text_documents(path, split, emit);
    }
    ++report.sequences;  // counts input files
  }
  report.dtype = "text";
  report.shards = writer.finish();
  return report;
}

}  // namespace mlkv::data
