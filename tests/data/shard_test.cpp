// Shard format: write/read round trips (uint16, uint32, gzip), rollover and tail folding,
// document offsets, and the clear errors for bad shards and bad dataset paths.
#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <sstream>

#include "tests/data/data_test_util.h"
#include "data/dataset.h"
#include "data/inspect.h"
#include "data/shard_reader.h"
#include "data/shard_writer.h"

namespace mlkv::data {
namespace {

using test::expect_data_error;
using test::ScratchDir;
using test::write_raw_shard;

std::vector<uint32_t> random_tokens(size_t n, uint32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens(n);
  for (auto& t : tokens) t = rng() % vocab;
  return tokens;
}

// Concatenation of all shards' tokens, read back through ShardReader in odd-sized pieces.
std::vector<uint32_t> read_all(const std::vector<std::string>& shards) {
  std::vector<uint32_t> all;
  for (const auto& path : shards) {
    ShardReader reader(path);
    std::vector<int32_t> piece;
    for (int64_t at = 0; at < reader.info().num_tokens; at += 777) {
      int64_t n = std::min<int64_t>(777, reader.info().num_tokens - at);
      piece.resize(size_t(n));
      reader.read(at, n, piece.data());
      for (int32_t t : piece) all.push_back(static_cast<uint32_t>(t));
    }
  }
  return all;
}

struct RoundTripCase {
  int64_t vocab;
  int compress;
};

class RoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTrip, TokensAttributesAndDocuments) {
  ScratchDir dir;
  const auto [vocab, compress] = GetParam();
  auto tokens = random_tokens(10000, static_cast<uint32_t>(vocab), 7);
  ShardWriterOptions options;
  options.out_dir = dir / "out";
  options.vocab_size = vocab;
  options.eod_id = 0;
  options.tokenizer = "test-tok";
  options.shard_tokens = 4000;
  options.chunk_tokens = 512;
  options.compress_level = compress;
  ShardWriter writer(options);
  // Documents of 1500 tokens, appended in pieces of 700 so boundaries fall anywhere.
  for (size_t at = 0; at < tokens.size(); at += 1500) {
    size_t end = std::min(tokens.size(), at + 1500);
    for (size_t p = at; p < end; p += 700) {
      writer.append(std::span<const uint32_t>(tokens.data() + p, std::min(end, p + 700) - p));
    }
    writer.end_document();
  }
  auto shards = writer.finish();
  // 10000 = 4000 + 4000 + 2000: the tail is exactly half, so it stays its own shard.
  ASSERT_EQ(shards.size(), 3u);
  EXPECT_EQ(read_all(shards), tokens);
  int64_t docs = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    ShardReader reader(shards[i]);
    const ShardInfo& info = reader.info();
    EXPECT_EQ(info.dtype, vocab <= 65535 ? TokenType::kUint16 : TokenType::kUint32);
    EXPECT_EQ(info.vocab_size, vocab);
    EXPECT_EQ(info.eod_id, 0);
    EXPECT_EQ(info.tokenizer, "test-tok");
    EXPECT_EQ(info.format_version, 1);
    EXPECT_EQ(info.deflate_level, compress);
    EXPECT_EQ(info.chunk_tokens, 512);
    const int64_t begin = int64_t(i) * 4000;
    EXPECT_EQ(info.max_token_id,
              *std::max_element(tokens.begin() + begin, tokens.begin() + begin + info.num_tokens));
    auto offsets = reader.doc_offsets();
    ASSERT_FALSE(offsets.empty());
    EXPECT_EQ(offsets.back(), uint64_t(info.num_tokens));
    for (size_t k = 0; k + 1 < offsets.size(); ++k) {
      uint64_t global = uint64_t(begin) + offsets[k];
      bool is_start = global % 1500 == 0;
      EXPECT_TRUE(is_start || (k == 0 && info.first_doc_continues)) << global;
    }
    docs += info.num_doc_pieces - (info.first_doc_continues ? 1 : 0);
  }
  EXPECT_EQ(docs, 7);  // ceil(10000 / 1500)
}

INSTANTIATE_TEST_SUITE_P(Shard, RoundTrip,
                         ::testing::Values(RoundTripCase{50277, 0}, RoundTripCase{65535, 0},
                                           RoundTripCase{100000, 0}, RoundTripCase{50277, 4}));

TEST(ShardWriter, ShortTailFoldsIntoPreviousShard) {
  ScratchDir dir;
  auto tokens = random_tokens(9000, 1000, 3);
  ShardWriterOptions options;
  options.out_dir = dir.str();
  options.vocab_size = 1000;
  options.shard_tokens = 4000;
  options.chunk_tokens = 1000;
  ShardWriter writer(options);
  writer.append(std::span<const uint32_t>(tokens));
  auto shards = writer.finish();
  ASSERT_EQ(shards.size(), 2u);  // 4000 + (4000 + 1000)
  EXPECT_EQ(ShardReader(shards[1]).info().num_tokens, 5000);
  EXPECT_EQ(read_all(shards), tokens);
  EXPECT_FALSE(std::filesystem::exists(dir / "shard-00002.h5"));
  for (const auto& entry : std::filesystem::directory_iterator(dir.str())) {
    EXPECT_EQ(entry.path().extension(), ".h5") << "left behind: " << entry.path();
  }
}

TEST(ShardWriter, RejectsTokenAtOrAboveVocab) {
  ScratchDir dir;
  ShardWriterOptions options;
  options.out_dir = dir.str();
  options.vocab_size = 100;
  ShardWriter writer(options);
  std::vector<uint32_t> tokens = {1, 2, 100};
  expect_data_error([&] { writer.append(std::span<const uint32_t>(tokens)); },
                    {"token id 100", "input position 2", "vocab_size 100"});
}

TEST(ShardReader, MissingFile) {
  ScratchDir dir;
  expect_data_error([&] { ShardReader reader(dir / "nope.h5"); }, {"nope.h5", "does not exist"});
}

TEST(ShardReader, NotHdf5) {
  ScratchDir dir;
  test::write_bytes(dir / "junk.h5", std::vector<uint8_t>(4096, 0x41));
  expect_data_error([&] { ShardReader reader(dir / "junk.h5"); },
                    {"junk.h5", "not an HDF5 file", "byte offset 0", "4096 bytes"});
}

TEST(ShardReader, TruncatedFile) {
  ScratchDir dir;
  write_raw_shard(dir / "full.h5", random_tokens(50000, 50000, 1));
  auto bytes = test::read_bytes(dir / "full.h5");
  bytes.resize(bytes.size() / 2);
  test::write_bytes(dir / "cut.h5", bytes);
  expect_data_error([&] { validate_dataset(dir / "cut.h5", 50277, 16); },
                    {"cut.h5", "truncated or corrupt", std::to_string(bytes.size()) + " bytes"});
}

TEST(ShardReader, WrongDtype) {
  ScratchDir dir;
  write_raw_shard(dir / "float.h5", {1, 2, 3}, H5T_IEEE_F32LE);
  expect_data_error([&] { ShardReader reader(dir / "float.h5"); },
                    {"float.h5", "/tokens has the wrong dtype", "expected uint16 or uint32"});
  write_raw_shard(dir / "int64.h5", {1, 2, 3}, H5T_STD_I64LE);
  expect_data_error([&] { ShardReader reader(dir / "int64.h5"); },
                    {"int64.h5", "wrong dtype", "8 bytes", "signed"});
}

TEST(ShardReader, MissingTokensOrHeader) {
  ScratchDir dir;
  hid_t file = H5Fcreate((dir / "empty.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(file);
  expect_data_error([&] { ShardReader reader(dir / "empty.h5"); }, {"empty.h5", "no /tokens"});
  write_raw_shard(dir / "noversion.h5", {1, 2}, H5T_STD_U16LE, 50277, std::nullopt);
  expect_data_error([&] { ShardReader reader(dir / "noversion.h5"); },
                    {"noversion.h5", "format_version"});
  write_raw_shard(dir / "future.h5", {1, 2}, H5T_STD_U16LE, 50277, 99);
  expect_data_error([&] { ShardReader reader(dir / "future.h5"); },
                    {"future.h5", "format_version 99"});
  write_raw_shard(dir / "novocab.h5", {1, 2}, H5T_STD_U16LE, std::nullopt);
  expect_data_error([&] { ShardReader reader(dir / "novocab.h5"); },
                    {"novocab.h5", "vocab_size"});
}

TEST(ShardReader, CorruptCompressedChunkIsADataError) {
  ScratchDir dir;
  ShardWriterOptions options;
  options.out_dir = dir.str();
  options.vocab_size = 50000;
  options.compress_level = 1;
  ShardWriter writer(options);
  auto tokens = random_tokens(100000, 50000, 5);
  writer.append(std::span<const uint32_t>(tokens));
  auto shards = writer.finish();
  auto bytes = test::read_bytes(shards[0]);
  std::fill(bytes.begin() + long(bytes.size() / 2), bytes.begin() + long(bytes.size() / 2) + 2000, 0);
  test::write_bytes(shards[0], bytes);
  std::ostringstream report;
  VerifyResult result = verify_dataset(dir.str(), 0, report);
  EXPECT_GE(result.errors, 1);
  EXPECT_NE(report.str().find("shard-00000.h5: cannot read /tokens at token offset"),
            std::string::npos) << report.str();
  ShardReader reader(shards[0]);
  std::vector<int32_t> all(100000);
  expect_data_error([&] { reader.read(0, 100000, all.data()); },
                    {"shard-00000.h5", "token offset", "corrupt chunk"});
}

TEST(ShardReader, ReadOutsideRangeNamesOffset) {
  ScratchDir dir;
  write_raw_shard(dir / "s.h5", {1, 2, 3, 4});
  ShardReader reader(dir / "s.h5");
  std::vector<int32_t> out(4);
  expect_data_error([&] { reader.read(2, 4, out.data()); }, {"s.h5", "[2, 6)", "length 4"});
}

TEST(Dataset, MissingPathEmptyDirAndGlob) {
  ScratchDir dir;
  expect_data_error([&] { list_shards(dir / "absent"); }, {"absent", "does not exist"});
  std::filesystem::create_directories(dir / "empty");
  expect_data_error([&] { validate_dataset(dir / "empty", 50277, 8); },
                    {"empty", "holds no shard"});
  expect_data_error([&] { list_shards(dir / "x-*.h5"); }, {"x-*.h5", "matches no shard"});
  write_raw_shard(dir / "x-1.h5", {1});
  write_raw_shard(dir / "x-0.h5", {1});
  test::write_bytes(dir / "x-2.h5.partial", {1});
  auto shards = list_shards(dir / "x-*.h5");
  ASSERT_EQ(shards.size(), 2u);
  EXPECT_EQ(shards[0], dir / "x-0.h5");
}

TEST(Dataset, TokenAtOrAboveVocabNamesFileAndOffset) {
  ScratchDir dir;
  std::vector<uint32_t> tokens(3000, 5);
  tokens[2345] = 50300;
  // With a max_token_id attribute the check needs no scan to notice; without it, a scan.
  write_raw_shard(dir / "a.h5", tokens, H5T_STD_U16LE, 50304, 1, 50300);
  expect_data_error([&] { validate_dataset(dir / "a.h5", 50277, 128); },
                    {"a.h5", "token id 50300", "token offset 2345", "vocab_size 50277"});
  write_raw_shard(dir / "b.h5", tokens, H5T_STD_U16LE, 50277, 1);
  expect_data_error([&] { validate_dataset(dir / "b.h5", 0, 128); },
                    {"b.h5", "token id 50300", "token offset 2345", "vocab_size 50277"});
  EXPECT_NO_THROW(validate_dataset(dir / "a.h5", 50304, 128));
}

TEST(Dataset, ShardShorterThanOneSample) {
  ScratchDir dir;
  write_raw_shard(dir / "shard-0.h5", std::vector<uint32_t>(200, 1));
  write_raw_shard(dir / "shard-1.h5", std::vector<uint32_t>(100, 1));
  expect_data_error([&] { validate_dataset(dir.str(), 50277, 128); },
                    {"shard-1.h5", "100 tokens", "seq_len + 1 = 129"});
  EXPECT_NO_THROW(validate_dataset(dir.str(), 50277, 99));
}

}  // namespace
}  // namespace mlkv::data
