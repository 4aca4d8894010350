// ShardReader: header validation and hyperslab reads of one shard.
#include "data/shard_reader.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "core/crc32.h"
#include "core/errors.h"

namespace mlkv::data {

namespace {

std::string file_size_text(const std::string& path) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  return ec ? std::string("size unknown") : std::to_string(size) + " bytes";
}

}  // namespace

ShardReader::ShardReader(const std::string& path, std::vector<uint8_t>* verified_blocks)
    : verified_(verified_blocks ? verified_blocks : &own_verified_) {
  h5::quiet_errors();
  info_.path = path;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw DataError(path + ": shard file does not exist");
  // Datasets whose elements must be stored in the file cannot hold more than the file's bytes: a
  // bound on what a damaged header can make us allocate.
  const auto file_bytes = std::filesystem::file_size(path, ec);
  const uint64_t max_stored = ec ? 0 : static_cast<uint64_t>(file_bytes);
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    h5::last_error();
    throw DataError(path + ": not an HDF5 file (byte offset 0: no HDF5 signature; " +
                    file_size_text(path) + ")");
  }
  file_ = h5::Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!file_.valid()) {
    throw DataError(path + ": truncated or corrupt HDF5 file (" + file_size_text(path) +
                    "): " + h5::last_error());
  }
  if (H5Lexists(file_.get(), kTokensDataset, H5P_DEFAULT) <= 0) {
    h5::last_error();
    throw DataError(path + ": no /tokens dataset (not an mlkv token shard)");
  }
  // Uncompressed windows are read straight from the file; a chunk cache would only turn a
  // 4 KiB window read into a 2 MiB chunk read. Compressed chunks get a small cache so that
  // sequential readers inflate each chunk once.
  h5::Handle dapl(H5Pcreate(H5P_DATASET_ACCESS));
  tokens_ = h5::Handle(H5Dopen2(file_.get(), kTokensDataset, H5P_DEFAULT));
  if (!tokens_.valid()) {
    throw DataError(path + ": cannot open /tokens: " + h5::last_error());
  }
  h5::Handle type(H5Dget_type(tokens_.get()));
  size_t type_size = H5Tget_size(type.get());
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_sign(type.get()) != H5T_SGN_NONE ||
      (type_size != 2 && type_size != 4)) {
    throw DataError(path + ": /tokens has the wrong dtype (class " +
                    std::to_string(int(H5Tget_class(type.get()))) + ", " +
                    std::to_string(type_size) + " bytes" +
                    (H5Tget_sign(type.get()) == H5T_SGN_2 ? ", signed" : "") +
                    "); expected uint16 or uint32");
  }
  info_.dtype = type_size == 2 ? TokenType::kUint16 : TokenType::kUint32;
  file_space_ = h5::Handle(H5Dget_space(tokens_.get()));
  if (H5Sget_simple_extent_ndims(file_space_.get()) != 1) {
    throw DataError(path + ": /tokens must be 1-D");
  }
  hsize_t n = 0;
  H5Sget_simple_extent_dims(file_space_.get(), &n, nullptr);
  info_.num_tokens = static_cast<int64_t>(n);

  h5::Handle dcpl(H5Dget_create_plist(tokens_.get()));
  if (H5Pget_layout(dcpl.get()) == H5D_CHUNKED) {
    hsize_t chunk = 0;
    H5Pget_chunk(dcpl.get(), 1, &chunk);
    info_.chunk_tokens = static_cast<int64_t>(chunk);
    int filters = H5Pget_nfilters(dcpl.get());
    for (int i = 0; i < filters; ++i) {
      unsigned flags = 0, values[4] = {0, 0, 0, 0};
      size_t nvalues = 4;
      H5Z_filter_t id = H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &nvalues,
                                       values, 0, nullptr, nullptr);
      if (id == H5Z_FILTER_DEFLATE) info_.deflate_level = nvalues > 0 ? int(values[0]) : 1;
    }
    if (info_.deflate_level > 0 || filters > 0) {
      // 8 MiB of inflated chunks per open shard: a small dataset (the demo) ends up fully
      // cached, a large one at least inflates each chunk once when read sequentially.
      size_t cache_bytes = std::max<size_t>(size_t{8} << 20,
                                            static_cast<size_t>(info_.chunk_tokens) * type_size);
      H5Pset_chunk_cache(dapl.get(), 10007, cache_bytes, 0.75);
    } else {
      H5Pset_chunk_cache(dapl.get(), 0, 0, 1.0);
    }
    // Close first: while one handle is open HDF5 shares its dataset and ignores a new dapl.
    tokens_.reset();
    tokens_ = h5::Handle(H5Dopen2(file_.get(), kTokensDataset, dapl.get()));
    if (!tokens_.valid()) throw DataError(path + ": cannot open /tokens: " + h5::last_error());
  }

  hid_t root = file_.get();
  if (!h5::read_int_attribute(root, kAttrFormatVersion, info_.format_version, path)) {
    throw DataError(path + ": missing attribute 'format_version' (not an mlkv token shard)");
  }
  if (info_.format_version < 1 || info_.format_version > kFormatVersion) {
    throw DataError(path + ": shard format_version " + std::to_string(info_.format_version) +
                    " is not supported (this build reads 1.." + std::to_string(kFormatVersion) +
                    ")");
  }
  if (!h5::read_int_attribute(root, kAttrVocabSize, info_.vocab_size, path) ||
      info_.vocab_size <= 0) {
    throw DataError(path + ": missing or invalid attribute 'vocab_size'");
  }
  if (info_.dtype == TokenType::kUint16 && info_.vocab_size > 65536) {
    throw DataError(path + ": vocab_size " + std::to_string(info_.vocab_size) +
                    " does not fit uint16 /tokens");
  }
  h5::read_int_attribute(root, kAttrEodId, info_.eod_id, path);
  h5::read_string_attribute(root, kAttrTokenizer, info_.tokenizer, path);
  h5::read_string_attribute(root, kAttrSource, info_.source, path);
  info_.has_max_token_id = h5::read_int_attribute(root, kAttrMaxTokenId, info_.max_token_id, path);
  h5::read_int_attribute(root, kAttrSequenceLength, info_.sequence_length, path);
  int64_t continues = 0;
  h5::read_int_attribute(root, kAttrFirstDocContinues, continues, path);
  info_.first_doc_continues = continues != 0;
  int64_t recorded_tokens = 0;
  if (h5::read_int_attribute(root, kAttrNumTokens, recorded_tokens, path) &&
      recorded_tokens != info_.num_tokens) {
    throw DataError(path + ": /tokens holds " + std::to_string(info_.num_tokens) +
                    " tokens but the header says " + std::to_string(recorded_tokens) +
                    " (file truncated or rewritten?)");
  }
  // Length of a 1-D dataset of `element_bytes` elements, checked against the file's size.
  auto stored_length = [&](const char* name, size_t element_bytes) -> hsize_t {
    h5::Handle dset(H5Dopen2(root, name, H5P_DEFAULT));
    h5::Handle space(dset.valid() ? H5Dget_space(dset.get()) : H5I_INVALID_HID);
    hsize_t count = 0;
    if (!space.valid() || H5Sget_simple_extent_ndims(space.get()) != 1 ||
        H5Sget_simple_extent_dims(space.get(), &count, nullptr) != 1) {
      throw DataError(path + ": unreadable /" + name + " " + h5::last_error());
    }
    if (count > max_stored / element_bytes) {
      throw DataError(path + ": /" + name + " claims " + std::to_string(count) +
                      " elements, more than the file's " + std::to_string(max_stored) +
                      " bytes can hold (damaged header)");
    }
    return count;
  };
  if (H5Lexists(root, kDocOffsetsDataset, H5P_DEFAULT) > 0) {
    const hsize_t count = stored_length(kDocOffsetsDataset, sizeof(uint64_t));
    info_.num_doc_pieces = count > 0 ? static_cast<int64_t>(count) - 1 : 0;
  }
  if (H5Lexists(root, kChunkCrcDataset, H5P_DEFAULT) > 0) {
    if (!h5::read_int_attribute(root, kAttrCrcBlockTokens, info_.crc_block_tokens, path) ||
        info_.crc_block_tokens <= 0) {
      throw DataError(path + ": /chunk_crc32 without a positive attribute 'crc_block_tokens'");
    }
    const hsize_t count = stored_length(kChunkCrcDataset, sizeof(uint32_t));
    if (static_cast<int64_t>(count) != info_.num_crc_blocks()) {
      throw DataError(path + ": /chunk_crc32 holds " + std::to_string(count) +
                      " checksums, but " + std::to_string(info_.num_tokens) + " tokens in blocks of " +
                      std::to_string(info_.crc_block_tokens) + " need " +
                      std::to_string(info_.num_crc_blocks()) + " (file truncated or rewritten?)");
    }
    crcs_.resize(count);
    h5::Handle dset(H5Dopen2(root, kChunkCrcDataset, H5P_DEFAULT));
    if (count > 0 && H5Dread(dset.get(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                             crcs_.data()) < 0) {
      throw DataError(path + ": cannot read /chunk_crc32: " + h5::last_error());
    }
    if (verified_->size() != count) verified_->assign(count, 0);
  }
  h5::last_error();
}

void ShardReader::read_hyperslab(int64_t start, int64_t count, void* out) {
  hsize_t s = static_cast<hsize_t>(start), c = static_cast<hsize_t>(count);
  H5Sselect_hyperslab(file_space_.get(), H5S_SELECT_SET, &s, nullptr, &c, nullptr);
  h5::Handle mem_space(H5Screate_simple(1, &c, nullptr));
  hid_t mem_type = info_.dtype == TokenType::kUint16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
  if (H5Dread(tokens_.get(), mem_type, mem_space.get(), file_space_.get(), H5P_DEFAULT, out) <
      0) {
    throw DataError(info_.path + ": cannot read /tokens at token offset " +
                    std::to_string(start) + " (count " + std::to_string(count) +
                    "; corrupt chunk?): " + h5::last_error());
  }
}

void ShardReader::verify_block(int64_t block) {
  if (crcs_.empty() || (*verified_)[static_cast<size_t>(block)]) return;
  const int64_t first = block * info_.crc_block_tokens;
  const int64_t count = std::min(info_.crc_block_tokens, info_.num_tokens - first);
  const size_t bytes = static_cast<size_t>(count) * (info_.dtype == TokenType::kUint16 ? 2 : 4);
  block_buffer_.resize(bytes);
  read_hyperslab(first, count, block_buffer_.data());
  const uint32_t crc = crc32_update(0, block_buffer_.data(), bytes);
  if (crc != crcs_[static_cast<size_t>(block)]) {
    char text[64];
    std::snprintf(text, sizeof text, "CRC-32 %08x, /chunk_crc32 records %08x", crc,
                  crcs_[static_cast<size_t>(block)]);
    throw DataError(info_.path + ": tokens [" + std::to_string(first) + ", " +
                    std::to_string(first + count) + ") (checksum block " + std::to_string(block) +
                    ") fail their checksum: " + text +
                    " (the file was changed or damaged after writing)");
  }
  (*verified_)[static_cast<size_t>(block)] = 1;
}

void ShardReader::read_raw(int64_t start, int64_t count, void* out) {
  if (start < 0 || count < 0 || start > info_.num_tokens || count > info_.num_tokens - start) {
    throw DataError(info_.path + ": read of tokens [" + std::to_string(start) + ", " +
                    std::to_string(start + count) + ") is outside /tokens (length " +
                    std::to_string(info_.num_tokens) + ")");
  }
  if (count == 0) return;
  if (!crcs_.empty()) {
    for (int64_t b = start / info_.crc_block_tokens; b <= (start + count - 1) / info_.crc_block_tokens; ++b)
      verify_block(b);
  }
  read_hyperslab(start, count, out);
}

void ShardReader::read(int64_t start, int64_t count, int32_t* out) {
  if (info_.dtype == TokenType::kUint32) {
    read_raw(start, count, out);
    // Ids ≥ 2^31 would turn negative in int32: the vocab check catches them, keep them visible.
    return;
  }
  narrow_.resize(static_cast<size_t>(count));
  read_raw(start, count, narrow_.data());
  for (int64_t i = 0; i < count; ++i) out[i] = narrow_[static_cast<size_t>(i)];
}

std::vector<uint64_t> ShardReader::doc_offsets() {
  std::vector<uint64_t> offsets;
  if (info_.num_doc_pieces < 0) return offsets;
  h5::Handle dset(H5Dopen2(file_.get(), kDocOffsetsDataset, H5P_DEFAULT));
  offsets.resize(static_cast<size_t>(info_.num_doc_pieces + 1));
  if (!dset.valid() || H5Dread(dset.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                               offsets.data()) < 0) {
    throw DataError(info_.path + ": cannot read /doc_offsets: " + h5::last_error());
  }
  return offsets;
}

ShardInfo read_shard_info(const std::string& path) { return ShardReader(path).info(); }

}  // namespace mlkv::data
