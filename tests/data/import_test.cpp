// Importers: Megatron .idx/.bin files written byte by byte here (independently of the
// importer) must come out as shards whose tokens equal the source exactly; raw token files;
// text/jsonl tokenization; and every malformed input gets a DataError naming file and offset.
#include <gtest/gtest.h>

#include <numeric>

#include "data/bpe_tokenizer.h"
#include "data/import.h"
#include "data/shard_reader.h"
#include "data/text_corpus.h"
#include "tests/data/data_test_util.h"

namespace mlkv::data {
namespace {

using test::expect_data_error;
using test::ScratchDir;

void put(std::vector<uint8_t>& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

// Writes PREFIX.idx/.bin as Megatron's MMIDIDX v1 writer lays them out: sequences back to
// back in the .bin, byte pointers to each, and the document index (first sequence of each
// document, then the sequence count).
void write_megatron(const std::string& prefix, int code, int element_bytes,
                    const std::vector<std::vector<int64_t>>& sequences,
                    const std::vector<int64_t>& doc_index) {
  std::vector<uint8_t> idx, bin;
  const char magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
  idx.insert(idx.end(), magic, magic + 9);
  put(idx, 1, 8);
  put(idx, static_cast<uint64_t>(code), 1);
  put(idx, sequences.size(), 8);
  put(idx, doc_index.size(), 8);
  for (const auto& s : sequences) put(idx, s.size(), 4);
  uint64_t pointer = 0;
  for (const auto& s : sequences) {
    put(idx, pointer, 8);
    pointer += s.size() * static_cast<uint64_t>(element_bytes);
  }
  for (int64_t d : doc_index) put(idx, static_cast<uint64_t>(d), 8);
  for (const auto& s : sequences) {
    for (int64_t t : s) put(bin, static_cast<uint64_t>(t), element_bytes);
  }
  test::write_bytes(prefix + ".idx", idx);
  test::write_bytes(prefix + ".bin", bin);
}

std::vector<int64_t> read_all(const std::vector<std::string>& shards) {
  std::vector<int64_t> all;
  for (const auto& path : shards) {
    ShardReader reader(path);
    std::vector<int32_t> tokens(size_t(reader.info().num_tokens));
    reader.read(0, reader.info().num_tokens, tokens.data());
    for (int32_t t : tokens) all.push_back(static_cast<uint32_t>(t));
  }
  return all;
}

ShardWriterOptions small_shards(int64_t shard_tokens, int64_t vocab = 50277) {
  ShardWriterOptions o;
  o.vocab_size = vocab;
  o.eod_id = 0;
  o.shard_tokens = shard_tokens;
  o.chunk_tokens = 64;
  return o;
}

struct DtypeCase {
  int code, bytes;
  int64_t max_value;
};

class MegatronDtypes : public ::testing::TestWithParam<DtypeCase> {};

TEST_P(MegatronDtypes, DocumentLevelFilesImportExactly) {
  ScratchDir dir;
  const auto [code, bytes, max_value] = GetParam();
  std::vector<std::vector<int64_t>> sequences;
  std::vector<int64_t> expected;
  uint64_t state = 99;
  for (int s = 0; s < 40; ++s) {
    std::vector<int64_t> seq;
    int length = 1 + s * 7 % 53;
    for (int i = 0; i < length; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      seq.push_back(int64_t(state >> 33) % max_value);
    }
    seq.back() = 0;  // EOD, as Megatron's --append-eod leaves it
    expected.insert(expected.end(), seq.begin(), seq.end());
    sequences.push_back(seq);
  }
  // 40 sequences in 30 documents: docs 0..9 have two sequences each, the other 20 one.
  std::vector<int64_t> doc_index;
  for (int s = 0; s < 40; s += s < 20 ? 2 : 1) doc_index.push_back(s);
  doc_index.push_back(40);
  write_megatron(dir / "corpus_text_document", code, bytes, sequences, doc_index);
  auto report = import_megatron(dir / "corpus_text_document", dir / "out", small_shards(300),
                                -1);
  EXPECT_EQ(report.tokens, expected.size());
  EXPECT_EQ(report.documents, 30u);
  EXPECT_EQ(report.sequence_length, 0);
  EXPECT_GT(report.shards.size(), 1u);
  EXPECT_EQ(read_all(report.shards), expected);
  int64_t docs = 0;
  for (const auto& path : report.shards) {
    ShardReader reader(path);
    docs += reader.info().num_doc_pieces - (reader.info().first_doc_continues ? 1 : 0);
    EXPECT_EQ(reader.info().sequence_length, 0);
  }
  EXPECT_EQ(docs, 30);
}

INSTANTIATE_TEST_SUITE_P(Import, MegatronDtypes,
                         ::testing::Values(DtypeCase{8, 2, 50277}, DtypeCase{4, 4, 50277},
                                           DtypeCase{1, 1, 256}, DtypeCase{2, 1, 128},
                                           DtypeCase{3, 2, 32768}, DtypeCase{5, 8, 50277}));

TEST(ImportMegatron, PythiaFixedLengthSequences) {
  ScratchDir dir;
  const int kLength = 2049;
  std::vector<std::vector<int64_t>> sequences(7, std::vector<int64_t>(kLength));
  std::vector<int64_t> expected, doc_index;
  for (int s = 0; s < 7; ++s) {
    for (int i = 0; i < kLength; ++i) sequences[s][i] = (s * 1000 + i) % 50277;
    expected.insert(expected.end(), sequences[s].begin(), sequences[s].end());
    doc_index.push_back(s);
  }
  doc_index.push_back(7);
  write_megatron(dir / "pile_0.87_deduped_text_document", 8, 2, sequences, doc_index);
  // Asking for 5000-token shards gives 2 sequences (4098 tokens) per shard.
  auto report = import_megatron(dir / "pile_0.87_deduped_text_document.idx", dir / "out",
                                small_shards(5000), -1);
  EXPECT_EQ(report.sequence_length, kLength);
  EXPECT_EQ(read_all(report.shards), expected);
  for (const auto& path : report.shards) {
    ShardReader reader(path);
    EXPECT_EQ(reader.info().num_tokens % kLength, 0) << path;
    EXPECT_EQ(reader.info().sequence_length, kLength);
  }
}

TEST(ImportMegatron, MissingBinBesideIdx) {
  ScratchDir dir;
  write_megatron(dir / "p", 8, 2, {{1, 2, 3}}, {0, 1});
  std::filesystem::remove(dir / "p.bin");
  expect_data_error([&] { import_megatron(dir / "p", dir / "out", small_shards(100)); },
                    {"p.bin", "does not exist", "p.idx"});
}

TEST(ImportMegatron, BadHeaders) {
  ScratchDir dir;
  write_megatron(dir / "f", 6, 8, {{1, 2}}, {0, 1});
  expect_data_error([&] { import_megatron(dir / "f", dir / "out", small_shards(100)); },
                    {"f.idx", "byte offset 17", "dtype code 6", "float64", "not an integer"});
  write_megatron(dir / "g", 7, 4, {{1, 2}}, {0, 1});
  expect_data_error([&] { import_megatron(dir / "g", dir / "out", small_shards(100)); },
                    {"g.idx", "dtype code 7", "float32"});
  write_megatron(dir / "u", 9, 2, {{1, 2}}, {0, 1});
  expect_data_error([&] { import_megatron(dir / "u", dir / "out", small_shards(100)); },
                    {"u.idx", "unknown dtype code 9"});
  write_megatron(dir / "m", 8, 2, {{1, 2}}, {0, 1});
  auto idx = test::read_bytes(dir / "m.idx");
  idx[0] = 'X';
  test::write_bytes(dir / "m.idx", idx);
  expect_data_error([&] { import_megatron(dir / "m", dir / "out", small_shards(100)); },
                    {"m.idx", "byte offset 0", "bad magic"});
}

TEST(ImportMegatron, TruncatedIdxAndBin) {
  ScratchDir dir;
  write_megatron(dir / "t", 8, 2, {{1, 2, 3}, {4, 5}}, {0, 1, 2});
  auto idx = test::read_bytes(dir / "t.idx");
  idx.resize(idx.size() - 5);
  test::write_bytes(dir / "t.idx", idx);
  expect_data_error([&] { import_megatron(dir / "t", dir / "out", small_shards(100)); },
                    {"t.idx", "truncated", std::to_string(idx.size()) + " bytes"});
  write_megatron(dir / "b", 8, 2, {{1, 2, 3}, {4, 5}}, {0, 1, 2});
  auto bin = test::read_bytes(dir / "b.bin");
  bin.resize(7);
  test::write_bytes(dir / "b.bin", bin);
  expect_data_error([&] { import_megatron(dir / "b", dir / "out", small_shards(100)); },
                    {"b.bin", "byte offset 6", "sequence 1", "truncated"});
  test::write_bytes(dir / "h.idx", {'M', 'M', 'I'});
  expect_data_error([&] { import_megatron(dir / "h", dir / "out", small_shards(100)); },
                    {"h.idx", "truncated header"});
}

TEST(ImportMegatron, TokenOutsideVocabNamesBinOffset) {
  ScratchDir dir;
  write_megatron(dir / "v", 4, 4, {{1, 2, 3}, {4, 60000, 6}}, {0, 2});
  expect_data_error([&] { import_megatron(dir / "v", dir / "out", small_shards(100)); },
                    {"v.bin", "byte offset 16", "token 60000", "sequence 1"});
  write_megatron(dir / "n", 4, 4, {{1, -5}}, {0, 1});
  expect_data_error([&] { import_megatron(dir / "n", dir / "out", small_shards(100)); },
                    {"n.bin", "byte offset 4", "token -5"});
  // A failed import leaves no shard that looks complete.
  EXPECT_FALSE(std::filesystem::exists(dir / "out/shard-00000.h5"));
}

TEST(ImportRaw, Uint32RoundTripAndDocuments) {
  ScratchDir dir;
  std::vector<uint8_t> bytes;
  std::vector<int64_t> expected;
  for (uint32_t i = 0; i < 1000; ++i) {
    uint32_t t = i % 10 == 9 ? 0 : 70000 + i;
    put(bytes, t, 4);
    expected.push_back(t);
  }
  test::write_bytes(dir / "tokens.u32", bytes);
  auto report = import_raw(dir / "tokens.u32", "uint32", dir / "out", small_shards(400, 100000),
                           true);
  EXPECT_EQ(read_all(report.shards), expected);
  EXPECT_EQ(report.documents, 100u);
  EXPECT_EQ(ShardReader(report.shards[0]).info().dtype, TokenType::kUint32);
}

TEST(ImportRaw, SizeNotMultipleOfElement) {
  ScratchDir dir;
  test::write_bytes(dir / "odd.u16", {1, 0, 2, 0, 3});
  expect_data_error([&] { import_raw(dir / "odd.u16", "uint16", dir / "out", small_shards(10), false); },
                    {"odd.u16", "byte offset 4", "not a multiple"});
}

TEST(Tokenize, TextAndJsonlDocumentsWithEod) {
  ScratchDir dir;
  auto tokenizer = BpeTokenizer::load(std::string(MLKV_SOURCE_DIR) + "/data/tokenizer/gpt-neox-20b.json");
  test::write_bytes(dir / "a.txt", {'H', 'i', '\n', '\n', 'y', 'o', '\n'});
  std::string jsonl = "{\"text\": \"Hello world\"}\n\n{\"text\": \"\"}\n{\"text\": \"x\"}\n";
  test::write_bytes(dir / "b.jsonl", std::vector<uint8_t>(jsonl.begin(), jsonl.end()));
  auto options = small_shards(1000);
  auto report = tokenize_files(tokenizer, {dir / "a.txt", dir / "b.jsonl"}, dir / "out", options,
                               TextSplit::kParagraph);
  // "Hi" EOD "yo" EOD "Hello world" EOD (empty document skipped) "x" EOD
  std::vector<int64_t> expected;
  for (const char* text : {"Hi", "yo", "Hello world", "x"}) {
    for (int32_t id : tokenizer.encode(text)) expected.push_back(id);
    expected.push_back(0);
  }
  EXPECT_EQ(read_all(report.shards), expected);
  EXPECT_EQ(report.documents, 4u);
  // One document per file keeps the blank line inside it.
  auto whole = tokenize_files(tokenizer, {dir / "a.txt"}, dir / "out2", options, TextSplit::kFile);
  EXPECT_EQ(whole.documents, 1u);
}

TEST(Tokenize, BadInputsNameFileAndOffset) {
  ScratchDir dir;
  auto tokenizer = BpeTokenizer::load(std::string(MLKV_SOURCE_DIR) + "/data/tokenizer/gpt-neox-20b.json");
  std::string jsonl = "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n";
  test::write_bytes(dir / "c.jsonl", std::vector<uint8_t>(jsonl.begin(), jsonl.end()));
  expect_data_error([&] { tokenize_files(tokenizer, {dir / "c.jsonl"}, dir / "o1", small_shards(100), TextSplit::kFile); },
                    {"c.jsonl", "line 2", "byte offset 15", "'text'"});
  test::write_bytes(dir / "bad.txt", {'o', 'k', '\n', '\n', 'a', 0xFF, 'b'});
  expect_data_error([&] { tokenize_files(tokenizer, {dir / "bad.txt"}, dir / "o2", small_shards(100), TextSplit::kParagraph); },
                    {"bad.txt", "document at byte offset 4", "invalid UTF-8 at byte offset 1"});
}

}  // namespace
}  // namespace mlkv::data
