// ShardWriter: streaming HDF5 shard output with rollover, doc offsets and tail folding.
#include "data/shard_writer.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <bit>

#include "core/crc32.h"
#include "core/errors.h"
#include "data/h5.h"

namespace mlkv::data {

namespace fs = std::filesystem;

// The checksums are over little-endian elements, which is what this host stores in memory.
static_assert(std::endian::native == std::endian::little, "chunk CRCs assume a little-endian host");

namespace {

// CRC-32 of consecutive blocks of `block_bytes` bytes of one shard's token stream, fed in order.
struct BlockCrcs {
  size_t block_bytes = 0;
  size_t filled = 0;  // bytes of the current block so far
  uint32_t current = 0;
  std::vector<uint32_t> done;

  void feed(const void* data, size_t bytes) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (bytes > 0) {
      const size_t n = std::min(bytes, block_bytes - filled);
      current = crc32_update(current, p, n);
      filled += n;
      p += n;
      bytes -= n;
      if (filled == block_bytes) {
        done.push_back(current);
        current = 0;
        filled = 0;
      }
    }
  }
  std::vector<uint32_t> finish() const {
    std::vector<uint32_t> all = done;
    if (filled > 0) all.push_back(current);
    return all;
  }
};

}  // namespace

struct ShardWriter::OpenShard {
  std::string final_path;
  std::string partial_path;
  h5::Handle file;
  h5::Handle tokens;
  TokenType dtype = TokenType::kUint16;
  int64_t written = 0;             // tokens already in the file
  std::vector<uint32_t> pending;   // tokens not yet written (less than one chunk)
  int64_t max_token = -1;
  std::vector<uint64_t> doc_offsets;
  bool first_doc_continues = false;
  BlockCrcs crcs;  // of the tokens written so far, per chunk-sized block

  int64_t size() const { return written + static_cast<int64_t>(pending.size()); }
};

namespace {

std::string shard_name(const ShardWriterOptions& options, int index) {
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "-%05d.h5", index);
  return (fs::path(options.out_dir) / (options.prefix + suffix)).string();
}

// Appends `count` tokens to the /tokens dataset, converting to the shard's element type, and
// feeds the stored elements to the shard's chunk checksums.
void write_block(h5::Handle& dataset, TokenType dtype, int64_t offset,
                 const uint32_t* data, int64_t count, const std::string& path, BlockCrcs& crcs) {
  if (count == 0) return;
  hsize_t new_size = static_cast<hsize_t>(offset + count);
  if (H5Dset_extent(dataset.get(), &new_size) < 0) {
    throw IoError(path + ": cannot extend /tokens to " + std::to_string(new_size) + " " +
                  h5::last_error());
  }
  h5::Handle file_space(H5Dget_space(dataset.get()));
  hsize_t start = static_cast<hsize_t>(offset), n = static_cast<hsize_t>(count);
  H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr);
  h5::Handle mem_space(H5Screate_simple(1, &n, nullptr));
  herr_t status;
  if (dtype == TokenType::kUint16) {
    std::vector<uint16_t> narrow(data, data + count);
    status = H5Dwrite(dataset.get(), H5T_NATIVE_UINT16, mem_space.get(), file_space.get(),
                      H5P_DEFAULT, narrow.data());
    crcs.feed(narrow.data(), narrow.size() * sizeof(uint16_t));
  } else {
    status = H5Dwrite(dataset.get(), H5T_NATIVE_UINT32, mem_space.get(), file_space.get(),
                      H5P_DEFAULT, data);
    crcs.feed(data, static_cast<size_t>(count) * sizeof(uint32_t));
  }
  if (status < 0) {
    throw IoError(path + ": cannot write /tokens at offset " + std::to_string(offset) + " " +
                  h5::last_error());
  }
}

}  // namespace

ShardWriter::ShardWriter(ShardWriterOptions options) : options_(std::move(options)) {
  h5::quiet_errors();
  if (options_.vocab_size <= 0 || options_.vocab_size > (int64_t{1} << 32)) {
    throw ConfigError("shard writer: vocab_size must be in [1, 2^32], got " +
                      std::to_string(options_.vocab_size));
  }
  if (options_.shard_tokens <= 0) throw ConfigError("shard writer: shard_tokens must be > 0");
  if (options_.compress_level < 0 || options_.compress_level > 9) {
    throw ConfigError("shard writer: compression level must be 0..9");
  }
  if (options_.chunk_tokens <= 0) {
    options_.chunk_tokens =
        options_.compress_level > 0 ? kDefaultCompressedChunkTokens : kDefaultChunkTokens;
  }
  options_.chunk_tokens = std::min(options_.chunk_tokens, options_.shard_tokens);
  std::error_code ec;
  fs::create_directories(options_.out_dir, ec);
  if (ec) throw IoError(options_.out_dir + ": cannot create directory: " + ec.message());
}

ShardWriter::~ShardWriter() {
  if (finished_) return;
  // Abandoned (an exception is unwinding): close and remove the incomplete files.
  for (auto* shard : {previous_.get(), current_.get()}) {
    if (shard == nullptr) continue;
    shard->tokens.reset();
    shard->file.reset();
    std::error_code ec;
    fs::remove(shard->partial_path, ec);
  }
}

void ShardWriter::open_next_shard() {
  auto shard = std::make_unique<OpenShard>();
  shard->final_path = shard_name(options_, shard_index_++);
  shard->partial_path = shard->final_path + ".partial";
  shard->dtype = token_type_for_vocab(options_.vocab_size);
  shard->file = h5::Handle(
      H5Fcreate(shard->partial_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  if (!shard->file.valid()) {
    throw IoError(shard->partial_path + ": cannot create " + h5::last_error());
  }
  hsize_t zero = 0, unlimited = H5S_UNLIMITED;
  hsize_t chunk = static_cast<hsize_t>(options_.chunk_tokens);
  h5::Handle space(H5Screate_simple(1, &zero, &unlimited));
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(dcpl.get(), 1, &chunk);
  H5Pset_obj_track_times(dcpl.get(), false);  // no timestamps: same input, same bytes
  if (options_.compress_level > 0) {
    // Byte shuffle first: the high bytes of token ids are highly repetitive.
    H5Pset_shuffle(dcpl.get());
    H5Pset_deflate(dcpl.get(), static_cast<unsigned>(options_.compress_level));
  }
  hid_t file_type = shard->dtype == TokenType::kUint16 ? H5T_STD_U16LE : H5T_STD_U32LE;
  shard->tokens = h5::Handle(H5Dcreate2(shard->file.get(), kTokensDataset, file_type,
                                        space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
  if (!shard->tokens.valid()) {
    throw IoError(shard->partial_path + ": cannot create /tokens " + h5::last_error());
  }
  shard->pending.reserve(static_cast<size_t>(options_.chunk_tokens));
  shard->crcs.block_bytes = static_cast<size_t>(options_.chunk_tokens) *
                            (shard->dtype == TokenType::kUint16 ? 2 : 4);
  current_ = std::move(shard);
}

void ShardWriter::append(std::span<const int32_t> tokens) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0) {
      throw DataError("shard writer: negative token id " + std::to_string(tokens[i]) +
                      " at input position " + std::to_string(total_tokens_ + int64_t(i)));
    }
  }
  widen_buffer_.assign(tokens.begin(), tokens.end());
  append_checked(widen_buffer_.data(), static_cast<int64_t>(widen_buffer_.size()));
}

void ShardWriter::append(std::span<const uint32_t> tokens) {
  append_checked(tokens.data(), static_cast<int64_t>(tokens.size()));
}

void ShardWriter::end_document() { document_starts_next_ = true; }

void ShardWriter::append_checked(const uint32_t* tokens, int64_t count) {
  if (finished_) throw Error("shard writer: append after finish");
  while (count > 0) {
    if (!current_) open_next_shard();
    OpenShard& shard = *current_;
    int64_t room = options_.shard_tokens - shard.size();
    int64_t n = std::min(count, room);
    if (options_.doc_offsets) {
      if (shard.size() == 0 && !document_starts_next_) {
        shard.first_doc_continues = true;
        shard.doc_offsets.push_back(0);
      } else if (document_starts_next_) {
        shard.doc_offsets.push_back(static_cast<uint64_t>(shard.size()));
      }
    }
    document_starts_next_ = false;
    for (int64_t i = 0; i < n; ++i) {
      uint32_t token = tokens[i];
      if (token >= static_cast<uint64_t>(options_.vocab_size)) {
        throw DataError("shard writer: token id " + std::to_string(token) + " at input position " +
                        std::to_string(total_tokens_ + i) + " is >= vocab_size " +
                        std::to_string(options_.vocab_size));
      }
      shard.max_token = std::max<int64_t>(shard.max_token, token);
      shard.pending.push_back(token);
      if (static_cast<int64_t>(shard.pending.size()) == options_.chunk_tokens) {
        write_block(shard.tokens, shard.dtype, shard.written, shard.pending.data(),
                    options_.chunk_tokens, shard.partial_path, shard.crcs);
        shard.written += options_.chunk_tokens;
        shard.pending.clear();
      }
    }
    tokens += n;
    count -= n;
    total_tokens_ += n;
    // The previous shard stays open only while the current one could still become a short tail.
    if (previous_ && shard.size() >= options_.shard_tokens / 2) {
      close_shard(*previous_);
      previous_.reset();
    }
    if (shard.size() == options_.shard_tokens) {
      if (previous_) {
        close_shard(*previous_);
        previous_.reset();
      }
      previous_ = std::move(current_);
    }
  }
}

void ShardWriter::close_shard(OpenShard& shard) {
  const std::string& path = shard.partial_path;
  write_block(shard.tokens, shard.dtype, shard.written, shard.pending.data(),
              static_cast<int64_t>(shard.pending.size()), path, shard.crcs);
  shard.written += static_cast<int64_t>(shard.pending.size());
  shard.pending.clear();
  hid_t root = shard.file.get();
  if (options_.doc_offsets) {
    std::vector<uint64_t> offsets = shard.doc_offsets;
    offsets.push_back(static_cast<uint64_t>(shard.written));
    hsize_t n = offsets.size();
    h5::Handle space(H5Screate_simple(1, &n, nullptr));
    h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
    H5Pset_obj_track_times(dcpl.get(), false);
    h5::Handle dset(H5Dcreate2(root, kDocOffsetsDataset, H5T_STD_U64LE, space.get(), H5P_DEFAULT,
                               dcpl.get(), H5P_DEFAULT));
    if (!dset.valid() || H5Dwrite(dset.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                  offsets.data()) < 0) {
      throw IoError(path + ": cannot write /doc_offsets " + h5::last_error());
    }
  }
  {
    const std::vector<uint32_t> crcs = shard.crcs.finish();
    hsize_t n = crcs.size();
    h5::Handle space(H5Screate_simple(1, &n, nullptr));
    h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
    H5Pset_obj_track_times(dcpl.get(), false);
    h5::Handle dset(H5Dcreate2(root, kChunkCrcDataset, H5T_STD_U32LE, space.get(), H5P_DEFAULT,
                               dcpl.get(), H5P_DEFAULT));
    if (!dset.valid() || (n > 0 && H5Dwrite(dset.get(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL,
                                            H5P_DEFAULT, crcs.data()) < 0)) {
      throw IoError(path + ": cannot write /" + kChunkCrcDataset + " " + h5::last_error());
    }
    h5::write_int_attribute(root, kAttrCrcBlockTokens, options_.chunk_tokens, path);
  }
  h5::write_int_attribute(root, kAttrFormatVersion, kFormatVersion, path);
  h5::write_int_attribute(root, kAttrVocabSize, options_.vocab_size, path);
  h5::write_int_attribute(root, kAttrEodId, options_.eod_id, path);
  h5::write_string_attribute(root, kAttrTokenizer, options_.tokenizer, path);
  h5::write_string_attribute(root, kAttrSource, options_.source, path);
  h5::write_int_attribute(root, kAttrNumTokens, shard.written, path);
  h5::write_int_attribute(root, kAttrMaxTokenId, shard.max_token, path);
  h5::write_int_attribute(root, kAttrSequenceLength, options_.sequence_length, path);
  h5::write_int_attribute(root, kAttrFirstDocContinues, shard.first_doc_continues ? 1 : 0, path);
  shard.tokens.reset();
  if (H5Fclose(shard.file.get()) < 0) throw IoError(path + ": close failed " + h5::last_error());
  shard.file = h5::Handle();
  std::error_code ec;
  fs::rename(shard.partial_path, shard.final_path, ec);
  if (ec) throw IoError(shard.partial_path + ": cannot rename into place: " + ec.message());
  finished_paths_.push_back(shard.final_path);
}

std::vector<std::string> ShardWriter::finish() {
  if (finished_) return finished_paths_;
  if (current_ && previous_ && current_->size() < options_.shard_tokens / 2) {
    // Fold the short tail into the previous shard: copy its written part back, then its pending.
    OpenShard& tail = *current_;
    OpenShard& into = *previous_;
    const uint64_t base = static_cast<uint64_t>(into.size());
    std::vector<uint32_t> block;
    for (int64_t start = 0; start < tail.written; start += options_.chunk_tokens) {
      int64_t n = std::min(options_.chunk_tokens, tail.written - start);
      block.resize(static_cast<size_t>(n));
      h5::Handle file_space(H5Dget_space(tail.tokens.get()));
      hsize_t s = static_cast<hsize_t>(start), c = static_cast<hsize_t>(n);
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &s, nullptr, &c, nullptr);
      h5::Handle mem_space(H5Screate_simple(1, &c, nullptr));
      if (H5Dread(tail.tokens.get(), H5T_NATIVE_UINT32, mem_space.get(), file_space.get(),
                  H5P_DEFAULT, block.data()) < 0) {
        throw IoError(tail.partial_path + ": cannot read back /tokens " + h5::last_error());
      }
      into.pending.insert(into.pending.end(), block.begin(), block.end());
      write_block(into.tokens, into.dtype, into.written, into.pending.data(),
                  static_cast<int64_t>(into.pending.size()), into.partial_path, into.crcs);
      into.written += static_cast<int64_t>(into.pending.size());
      into.pending.clear();
    }
    into.pending.insert(into.pending.end(), tail.pending.begin(), tail.pending.end());
    into.max_token = std::max(into.max_token, tail.max_token);
    for (size_t i = tail.first_doc_continues ? 1 : 0; i < tail.doc_offsets.size(); ++i) {
      into.doc_offsets.push_back(base + tail.doc_offsets[i]);
    }
    tail.tokens.reset();
    tail.file.reset();
    std::error_code ec;
    fs::remove(tail.partial_path, ec);
    current_.reset();
    --shard_index_;
  }
  if (previous_) close_shard(*previous_);
  if (current_ && current_->size() > 0) close_shard(*current_);
  previous_.reset();
  current_.reset();
  finished_ = true;
  return finished_paths_;
}

}  // namespace mlkv::data
