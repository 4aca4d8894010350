// Data damaged after it was written (issue 17 item 8) is found before step 1, or named when read:
// overwritten bytes in an uncompressed shard fail their chunk checksum, a corrupt gzip chunk and a
// bad id behind a stale max_token_id are found by the start-up verification, ids at or above the
// shard's own vocab_size are refused, and shards from before checksums are still read.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "data/dataset.h"
#include "data/loader.h"
#include "data/shard_reader.h"
#include "data/shard_writer.h"
#include "tests/data/data_test_util.h"

namespace mlkv::data {
namespace {

using test::expect_data_error;
using test::ScratchDir;

// One uncompressed (or gzip) shard of 20,000 distinct-looking ids in 4,096-token chunks.
std::string write_shard(const ScratchDir& dir, int compress, std::vector<uint32_t>& tokens) {
  ShardWriterOptions o;
  o.out_dir = dir.str();
  o.vocab_size = 50000;
  o.chunk_tokens = 4096;
  o.compress_level = compress;
  tokens.resize(20000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>((i * 7919 + 13) % 50000);
  ShardWriter w(o);
  w.append(std::span<const uint32_t>(tokens));
  return w.finish().at(0);
}

LoaderOptions loader_options(const std::string& path) {
  LoaderOptions o;
  o.path = path;
  o.seq_len = 15;
  o.global_batch = 4;
  o.prefetch = 0;
  o.vocab_limit = 50304;
  return o;
}

TEST(ChunkChecksums, OverwrittenBytesInAnUncompressedShardAreFound) {
  ScratchDir dir;
  std::vector<uint32_t> tokens;
  const std::string path = write_shard(dir, 0, tokens);
  EXPECT_EQ(read_shard_info(path).crc_block_tokens, 4096);
  // Find tokens [5000, 5004) in the file (uint16 little-endian) and overwrite them with other
  // valid ids: the header, the size and max_token_id stay plausible.
  std::vector<uint16_t> needle(tokens.begin() + 5000, tokens.begin() + 5004);
  auto bytes = test::read_bytes(path);
  const auto* n = reinterpret_cast<const uint8_t*>(needle.data());
  const auto at = std::search(bytes.begin(), bytes.end(), n, n + 8);
  ASSERT_NE(at, bytes.end());
  std::fill(at, at + 8, uint8_t{1});
  test::write_bytes(path, bytes);

  // Before step 1 (a small dataset is verified up front) ...
  expect_data_error([&] { Loader l(loader_options(path)); },
                    {"shard-00000.h5", "tokens [4096, 8192)", "checksum block 1", "changed or damaged"});
  // ... or on the first read that touches the block; other blocks read fine.
  ShardReader r(path);
  std::vector<int32_t> out(100);
  EXPECT_NO_THROW(r.read(0, 100, out.data()));
  expect_data_error([&] { r.read(4990, 100, out.data()); }, {"checksum block 1"});
  LoaderOptions lazy = loader_options(path);
  lazy.verify = "lazy";
  EXPECT_NO_THROW(Loader l(lazy));
}

TEST(ChunkChecksums, CorruptGzipChunkIsFoundBeforeStep1) {
  ScratchDir dir;
  std::vector<uint32_t> tokens;
  const std::string path = write_shard(dir, 1, tokens);
  auto bytes = test::read_bytes(path);
  std::fill(bytes.begin() + long(bytes.size() / 2), bytes.begin() + long(bytes.size() / 2) + 64, uint8_t{0x55});
  test::write_bytes(path, bytes);
  EXPECT_NO_THROW(validate_dataset(path, 50304, 15)) << "the headers are intact";
  try {
    Loader l(loader_options(path));
    ADD_FAILURE() << "a corrupt chunk passed the start-up verification";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("shard-00000.h5"), std::string::npos) << e.what();
  }
}

TEST(ChunkChecksums, IdsAtOrAboveTheShardsOwnVocabSizeAreRefused) {
  ScratchDir dir;
  // Honest max_token_id 120, but the shard says its vocab has 100 ids; the model's has 50304.
  std::vector<uint32_t> tokens(400, 5);
  tokens[77] = 120;
  test::write_raw_shard(dir / "s.h5", tokens, H5T_STD_U16LE, 100, 1, 120);
  expect_data_error([&] { validate_dataset(dir / "s.h5", 50304, 15); },
                    {"s.h5", "token id 120", "token offset 77", ">= vocab_size 100"});
  LoaderOptions lazy = loader_options(dir / "s.h5");
  lazy.verify = "lazy";
  expect_data_error([&] { Loader l(lazy); }, {"token id 120"});
}

TEST(ChunkChecksums, ShardsWithoutChecksumsAreStillRead) {
  ScratchDir dir;
  std::vector<uint32_t> tokens(400);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i % 300);
  test::write_raw_shard(dir / "old.h5", tokens, H5T_STD_U16LE, 50277, 1, 299);
  EXPECT_EQ(read_shard_info(dir / "old.h5").crc_block_tokens, 0);
  Loader l(loader_options(dir / "old.h5"));
  EXPECT_TRUE(l.verified_at_start());
  std::vector<int32_t> batch;
  l.next(batch);
  EXPECT_EQ(batch.size(), 4u * 16u);
}

}  // namespace
}  // namespace mlkv::data
