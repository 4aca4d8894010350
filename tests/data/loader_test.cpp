// Sampler and Loader: the Feistel order is a permutation; the stream is a pure function of
// (seed, epoch, index); dp = 1, 2, 4 see the same data in the same order; a restore mid-epoch
// reproduces the stream exactly; splits; fixed-length sequences; reader-thread errors.
#include <gtest/gtest.h>

#include <set>

#include "data/loader.h"
#include "data/sampler.h"
#include "data/shard_writer.h"
#include "tests/data/data_test_util.h"

namespace mlkv::data {
namespace {

using test::expect_data_error;
using test::ScratchDir;

TEST(Feistel, IsAPermutationForManySizes) {
  for (uint64_t n : {1ull, 2ull, 3ull, 5ull, 16ull, 17ull, 1000ull, 4097ull, 65535ull}) {
    FeistelPermutation perm(n, 42);
    std::vector<bool> seen(n, false);
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t j = perm(i);
      ASSERT_LT(j, n);
      ASSERT_FALSE(seen[j]) << "n=" << n << " repeats " << j;
      seen[j] = true;
    }
  }
}

TEST(Feistel, KeysAndEpochsGiveDifferentOrders) {
  const uint64_t n = 10000;
  SampleOrder order(n, 1234, true), other_seed(n, 1235, true), plain(n, 1234, false);
  int same_epoch = 0, same_seed = 0, fixed_points = 0;
  for (uint64_t i = 0; i < n; ++i) {
    same_epoch += order.sample(0, i) == order.sample(1, i);
    same_seed += order.sample(0, i) == other_seed.sample(0, i);
    fixed_points += order.sample(0, i) == i;
    ASSERT_EQ(plain.sample(3, i), i);
  }
  // A random permutation agrees with another in about one place; allow a little slack.
  EXPECT_LT(same_epoch, 10);
  EXPECT_LT(same_seed, 10);
  EXPECT_LT(fixed_points, 10);
  // Pure function: a second object with the same inputs agrees everywhere.
  SampleOrder again(n, 1234, true);
  for (uint64_t i = 0; i < n; i += 37) EXPECT_EQ(again.sample(5, i), order.sample(5, i));
}

// Tokens equal their global offset (vocab 2^20, uint32), so each window's first token tells
// exactly which sample it is.
std::string make_counting_dataset(const ScratchDir& dir, int64_t tokens, int64_t shard_tokens,
                                  int64_t sequence_length = 0) {
  ShardWriterOptions options;
  options.out_dir = dir / "counting";
  options.vocab_size = 1 << 20;
  options.eod_id = 0;
  options.shard_tokens = shard_tokens;
  options.chunk_tokens = 1000;
  options.sequence_length = sequence_length;
  ShardWriter writer(options);
  std::vector<uint32_t> all(static_cast<size_t>(tokens));
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint32_t>(i);
  writer.append(std::span<const uint32_t>(all));
  writer.finish();
  return options.out_dir;
}

LoaderOptions options_for(const std::string& path, int dp_rank = 0, int dp_size = 1) {
  LoaderOptions o;
  o.path = path;
  o.seq_len = 15;
  o.global_batch = 8;
  o.dp_rank = dp_rank;
  o.dp_size = dp_size;
  o.seed = 77;
  o.prefetch = 2;
  return o;
}

// First token of each row of the next `steps` batches.
std::vector<int32_t> row_starts(Loader& loader, int steps) {
  std::vector<int32_t> starts, batch;
  const int64_t window = loader.seq_len() + 1;
  for (int s = 0; s < steps; ++s) {
    loader.next(batch);
    EXPECT_EQ(static_cast<int64_t>(batch.size()), loader.rows_per_rank() * window);
    for (int64_t r = 0; r < loader.rows_per_rank(); ++r) {
      // Each row is a contiguous window of the source.
      for (int64_t i = 1; i < window; ++i) {
        EXPECT_EQ(batch[size_t(r * window + i)], batch[size_t(r * window)] + i);
      }
      starts.push_back(batch[size_t(r * window)]);
    }
  }
  return starts;
}

TEST(Loader, SampleLayoutAndEpochsCoverEverySampleOnce) {
  ScratchDir dir;
  // 3 shards of 1000 tokens: (1000 - 16) / 15 + 1 = 66 windows each, none crossing shards.
  auto path = make_counting_dataset(dir, 3000, 1000);
  Loader loader(options_for(path));
  ASSERT_EQ(loader.num_samples(), 198);
  EXPECT_EQ(loader.stride(), 15);
  const int steps = 198 * 2 / 8 + 1;  // 50 steps, 400 samples: a bit more than two epochs
  auto starts = row_starts(loader, steps);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::set<int32_t> seen(starts.begin() + epoch * 198, starts.begin() + (epoch + 1) * 198);
    ASSERT_EQ(seen.size(), 198u) << "epoch " << epoch;
    for (int32_t start : seen) {
      int32_t local = start % 1000;
      EXPECT_EQ(local % 15, 0);
      EXPECT_LE(local + 16, 1000);
    }
  }
  EXPECT_NE(std::vector<int32_t>(starts.begin(), starts.begin() + 198),
            std::vector<int32_t>(starts.begin() + 198, starts.begin() + 396))
      << "epochs must be reshuffled";
  SamplerState state = loader.state();
  EXPECT_EQ(state.epoch, 2u);
  EXPECT_EQ(state.next_sample, 400u - 2 * 198);
}

TEST(Loader, DataParallelSizesSeeTheSameStream) {
  ScratchDir dir;
  auto path = make_counting_dataset(dir, 3000, 1000);
  Loader single(options_for(path));
  const int steps = 60;  // past an epoch boundary (198 samples / 8 per step)
  auto reference = row_starts(single, steps);
  for (int dp : {2, 4}) {
    std::vector<std::unique_ptr<Loader>> ranks;
    for (int r = 0; r < dp; ++r) ranks.push_back(std::make_unique<Loader>(options_for(path, r, dp)));
    std::vector<int32_t> merged;
    for (int s = 0; s < steps; ++s) {
      for (int r = 0; r < dp; ++r) {
        auto part = row_starts(*ranks[size_t(r)], 1);
        EXPECT_EQ(part.size(), size_t(8 / dp));
        merged.insert(merged.end(), part.begin(), part.end());
      }
    }
    EXPECT_EQ(merged, reference) << "dp=" << dp;
  }
}

TEST(Loader, RestoreMidEpochReproducesTheStream) {
  ScratchDir dir;
  auto path = make_counting_dataset(dir, 3000, 1000);
  Loader uninterrupted(options_for(path));
  row_starts(uninterrupted, 7);
  SamplerState saved = uninterrupted.state();
  EXPECT_EQ(saved.next_sample, 56u);
  auto continuation = row_starts(uninterrupted, 40);

  auto options = options_for(path);
  options.prefetch = 3;
  Loader resumed(options);
  row_starts(resumed, 2);  // different position, with batches already queued
  resumed.restore(saved);
  EXPECT_EQ(resumed.state(), saved);
  EXPECT_EQ(row_starts(resumed, 40), continuation);

  options.prefetch = 0;  // the synchronous path gives the same stream
  Loader synchronous(options);
  synchronous.restore(saved);
  EXPECT_EQ(row_starts(synchronous, 40), continuation);

  resumed.reset();
  Loader fresh(options_for(path));
  EXPECT_EQ(row_starts(resumed, 5), row_starts(fresh, 5));
  EXPECT_THROW(resumed.restore({0, 198}), DataError);
}

TEST(Loader, SeedChangesOrderShuffleOffKeepsIt) {
  ScratchDir dir;
  auto path = make_counting_dataset(dir, 3000, 1000);
  auto a = options_for(path), b = options_for(path), plain = options_for(path);
  b.seed = 78;
  plain.shuffle = false;
  Loader la(a), lb(b), lp(plain);
  EXPECT_NE(row_starts(la, 3), row_starts(lb, 3));
  std::vector<int32_t> expected;
  for (int i = 0; i < 16; ++i) expected.push_back((i / 66) * 1000 + (i % 66) * 15);
  EXPECT_EQ(row_starts(lp, 2), expected);
}

TEST(Loader, FixedLengthSequencesMakeSampleISequenceI) {
  ScratchDir dir;
  // Pythia layout: sequences of seq_len + 1 = 17 tokens; stride derives to 17.
  auto path = make_counting_dataset(dir, 17 * 50, 17 * 20, 17);
  auto options = options_for(path);
  options.seq_len = 16;
  options.shuffle = false;
  Loader loader(options);
  EXPECT_EQ(loader.stride(), 17);
  EXPECT_EQ(loader.num_samples(), 50);
  auto starts = row_starts(loader, 2);
  for (size_t i = 0; i < starts.size(); ++i) EXPECT_EQ(starts[i], int32_t(17 * i));
}

TEST(Loader, ValidationFractionIsHeldOut) {
  ScratchDir dir;
  auto path = make_counting_dataset(dir, 3000, 1000);
  auto train = options_for(path), val = options_for(path);
  train.val_fraction = val.val_fraction = 0.1;
  val.split = "val";
  Loader train_loader(train), val_loader(val);
  EXPECT_EQ(train_loader.num_samples(), 179);
  EXPECT_EQ(val_loader.num_samples(), 19);
  auto train_starts = row_starts(train_loader, 23);
  auto val_starts = row_starts(val_loader, 3);
  std::set<int32_t> train_set(train_starts.begin(), train_starts.end());
  for (int32_t s : val_starts) {
    EXPECT_FALSE(train_set.count(s)) << s;
    EXPECT_GE(s, 2000 + 47 * 15);  // the last 19 windows of the last shard
  }
}

TEST(Loader, ValidationPathReadsHeldOutShards) {
  ScratchDir dir;
  auto path = make_counting_dataset(dir, 3000, 1000);
  ShardWriterOptions o;
  o.out_dir = dir / "val";
  o.vocab_size = 1 << 20;
  ShardWriter writer(o);
  std::vector<uint32_t> tokens(100, 999999);
  writer.append(std::span<const uint32_t>(tokens));
  writer.finish();
  auto options = options_for(path);
  options.split = "val";
  options.val_path = dir / "val";
  Loader loader(options);
  EXPECT_EQ(loader.num_samples(), 6);
  std::vector<int32_t> batch;
  loader.next(batch);
  EXPECT_EQ(batch[0], 999999);
}

TEST(Loader, BadOptionsAreConfigErrors) {
  ScratchDir dir;
  auto path = make_counting_dataset(dir, 3000, 1000);
  auto o = options_for(path, 0, 3);  // 8 % 3 != 0
  EXPECT_THROW(Loader loader(o), ConfigError);
  o = options_for(path);
  o.split = "val";  // no val_fraction, no val_path
  EXPECT_THROW(Loader loader(o), ConfigError);
  o = options_for(path);
  o.seq_len = 0;
  EXPECT_THROW(Loader loader(o), ConfigError);
}

TEST(Loader, ConstructorRejectsBadDataUpFront) {
  ScratchDir dir;
  expect_data_error([&] { Loader loader(options_for(dir / "missing")); }, {"missing", "does not exist"});
  auto path = make_counting_dataset(dir, 3000, 1000);
  auto o = options_for(path);
  o.vocab_limit = 2500;  // tokens count up to 2999
  expect_data_error([&] { Loader loader(o); },
                    {"shard-00002.h5", "token id 2500", "token offset 500", "vocab_size 2500"});
}

TEST(Loader, ReaderThreadErrorsReachTheCaller) {
  ScratchDir dir;
  // The header claims max_token_id 10 (so start-up checks pass) but a token is 60000:
  // the reader thread finds it mid-stream and next() rethrows it.
  std::vector<uint32_t> tokens(400, 5);
  tokens[123] = 60000;
  test::write_raw_shard(dir / "lying.h5", tokens, H5T_STD_U16LE, 50277, 1, 10);
  auto o = options_for(dir / "lying.h5");
  o.shuffle = false;
  o.verify = "lazy";  // not checked up front (a large dataset)
  Loader loader(o);
  std::vector<int32_t> batch;
  expect_data_error([&] {
                      for (int i = 0; i < 10; ++i) loader.next(batch);
                    },
                    {"lying.h5", "token id 60000", "token offset 123"});
  // It stays failed rather than hanging.
  EXPECT_THROW(loader.next(batch), DataError);
  // A small dataset is verified before step 1 (data.verify = auto): the stale max_token_id
  // does not hide the bad id.
  o.verify = "auto";
  expect_data_error([&] { Loader again(o); }, {"lying.h5", "token id 60000", "token offset 123"});
}

}  // namespace
}  // namespace mlkv::data
