// safetensors reader and writer: round trips in every float dtype, the 16-bit conversions, and
// hostile files (truncated, huge or malformed headers, unknown dtypes, offsets that overrun or
// overlap) that must fail with a message naming the file and the tensor or offset.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "convert_test_util.h"
#include "core/errors.h"
#include "core/safetensors.h"

namespace mlkv {
namespace {

using safetensors::DType;
using safetensors::Reader;
using safetensors::Writer;

// A raw file: 8-byte length, the header text verbatim, then `data` bytes.
std::string raw_file(const std::string& dir, const std::string& name, const std::string& header, size_t data_bytes,
                     int64_t claimed_len = -1) {
  const std::string path = dir + "/" + name;
  std::string bytes(8, '\0');
  const uint64_t n = claimed_len >= 0 ? static_cast<uint64_t>(claimed_len) : header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
  bytes += header;
  bytes += std::string(data_bytes, '\x01');
  test::write_text(path, bytes);
  return path;
}

TEST(Safetensors, RoundTripEveryStoredType) {
  const std::string dir = test::scratch_dir("rt");
  std::vector<float> a(37), b(6);
  for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.37f * i) * 3.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = -1.5f + 0.25f * i;
  const std::vector<int32_t> ints{1, -2, 3, 2147483647, -2147483647 - 1};
  Writer w;
  w.add_f32("a32", a.data(), {37});
  w.add_bf16_from_f32("abf", a.data(), {37});
  w.add_f16_from_f32("a16", a.data(), {37});
  w.add_i32("ints", ints.data(), {5});
  w.add_lazy("lazy", DType::F32, {2, 3}, [&](float* out) { std::copy(b.begin(), b.end(), out); });
  w.add_f32("scalar", b.data(), {});
  w.add_f32("empty", b.data(), {0, 4});
  w.set_metadata("format", "pt");
  w.write(dir + "/x.safetensors");

  const Reader r(dir + "/x.safetensors");
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(r.data_offset() % 8, 0u);  // data section 8-byte aligned
  EXPECT_EQ(r.read_f32("a32"), a);
  const auto bf = r.read_f32("abf"), h = r.read_f32("a16");
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(bf[i], safetensors::bf16_to_f32(safetensors::f32_to_bf16(a[i])));
    EXPECT_NEAR(bf[i], a[i], std::abs(a[i]) / 256 + 1e-30);
    EXPECT_NEAR(h[i], a[i], std::abs(a[i]) / 2048 + 1e-7);
  }
  EXPECT_EQ(r.read_i32("ints"), ints);
  EXPECT_EQ(r.read_f32("lazy"), b);
  EXPECT_EQ(r.at("lazy").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r.read_f32("scalar"), std::vector<float>{b[0]});
  EXPECT_EQ(r.at("empty").numel(), 0);
  std::vector<float> part(3);
  r.read_f32_range("lazy", 2, 3, part.data());
  EXPECT_EQ(part, (std::vector<float>{b[2], b[3], b[4]}));
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { r.read_f32_range("lazy", 4, 3, part.data()); }, {"lazy", "outside"}));
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { (void)r.read_f32("nope"); }, {"x.safetensors", "no tensor 'nope'"}));
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { (void)r.read_f32("ints"); }, {"ints", "I32"}));
  std::vector<float> wrong(5);
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { r.read_f32("a32", wrong.data(), 5); }, {"a32", "37", "5"}));
}

TEST(Safetensors, SixteenBitConversionsRoundToNearestEven) {
  using namespace safetensors;
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie → even
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie → even (up)
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3F808001u)), 0x3F81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);                  // overflow → inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -26)), 0x0000);  // below half of it → 0
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  for (uint32_t h = 0; h < 0x7C00; ++h) {  // every finite positive f16 survives the trip exactly
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    ASSERT_EQ(f32_to_f16(f), h) << h;
  }
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
}

TEST(Safetensors, ReadsF64AndF16AndNarrowIntegers) {
  const std::string dir = test::scratch_dir("types");
  // Hand-built: an F64 [2] at 0..16, an I64 [2] at 16..32, a U8 [3] at 32..35.
  const std::string header =
      R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"i":{"dtype":"I64","shape":[2],"data_offsets":[16,32]},)"
      R"("u":{"dtype":"U8","shape":[3],"data_offsets":[32,35]}})";
  std::string data(35, '\0');
  const double dv[2] = {0.5, -3.25};
  const int64_t iv[2] = {7, -9};
  std::memcpy(data.data(), dv, 16);
  std::memcpy(data.data() + 16, iv, 16);
  data[32] = 1, data[33] = 2, data[34] = static_cast<char>(255);
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  test::write_text(dir + "/t.safetensors", bytes + header + data);
  const Reader r(dir + "/t.safetensors");
  EXPECT_EQ(r.read_f32("d"), (std::vector<float>{0.5f, -3.25f}));
  EXPECT_EQ(r.read_i32("i"), (std::vector<int32_t>{7, -9}));
  EXPECT_EQ(r.read_i32("u"), (std::vector<int32_t>{1, 2, 255}));

  // An I64 beyond int32 is refused, not wrapped.
  const std::string big = R"({"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})";
  std::string b2(8, '\0');
  for (int i = 0; i < 8; ++i) b2[i] = static_cast<char>(static_cast<uint64_t>(big.size()) >> (8 * i));
  const int64_t huge = int64_t{1} << 40;
  std::string d2(8, '\0');
  std::memcpy(d2.data(), &huge, 8);
  test::write_text(dir + "/big.safetensors", b2 + big + d2);
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { (void)Reader(dir + "/big.safetensors").read_i32("i"); },
                                                 {"big.safetensors", "'i'", "int32"}));
}

struct BadCase {
  const char* name;
  std::string header;
  size_t data_bytes;
  int64_t claimed_len;  // -1: the header's real length
  std::vector<std::string> expect;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class SafetensorsBad : public ::testing::TestWithParam<BadCase> {};

TEST_P(SafetensorsBad, FailsWithAMessageNamingFileAndCulprit) {
  const BadCase& c = GetParam();
  const std::string dir = test::scratch_dir("bad");
  const std::string path = raw_file(dir, std::string(c.name) + ".safetensors", c.header, c.data_bytes, c.claimed_len);
  std::vector<std::string> parts = c.expect;
  parts.push_back(std::string(c.name) + ".safetensors");
  try {
    Reader r(path);
    FAIL() << "opened " << c.name;
  } catch (const CheckpointError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

const std::string kT = R"("t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]})";

INSTANTIATE_TEST_SUITE_P(
    Files, SafetensorsBad,
    ::testing::Values(
        BadCase{"truncated_data", "{" + kT + "}", 20, -1, {"'t'", "overrun", "20"}},
        BadCase{"huge_header", "{}", 0, int64_t{1} << 40, {"header length", "limit"}},
        BadCase{"header_past_end", "{}", 0, 4096, {"header length 4096", "past the end"}},
        BadCase{"bad_json", R"({"t":{"dtype":"F32",)", 0, -1, {"not valid JSON", "offset"}},
        BadCase{"not_object", "[1,2]", 0, -1, {"not a JSON object"}},
        BadCase{"unknown_dtype", R"({"t":{"dtype":"F8_E9","shape":[1],"data_offsets":[0,1]}})", 1, -1,
                {"'t'", "unknown dtype 'F8_E9'"}},
        BadCase{"negative_shape", R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, -1,
                {"'t'", "non-negative"}},
        BadCase{"overflow_shape",
                R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}})", 4, -1,
                {"'t'", "overflows"}},
        BadCase{"size_mismatch", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, -1,
                {"'t'", "hold 8 bytes", "needs 12"}},
        BadCase{"backwards", R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8, -1, {"'t'", "backwards"}},
        BadCase{"overlap",
                R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                12, -1, {"'a'", "'b'", "overlap", "offset 4"}},
        BadCase{"duplicate",
                R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                8, -1, {"'a' twice"}},
        BadCase{"bad_metadata", R"({"__metadata__":{"k":1}})", 0, -1, {"__metadata__", "'k'"}},
        BadCase{"missing_offsets", R"({"t":{"dtype":"F32","shape":[1]}})", 4, -1, {"'t'", "data_offsets"}},
        BadCase{"extra_field", R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4, -1,
                {"'t'", "unknown field 'x'"}}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Safetensors, TooShortAndMissingFiles) {
  const std::string dir = test::scratch_dir("short");
  test::write_text(dir + "/short.safetensors", "abc");
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { Reader r(dir + "/short.safetensors"); },
                                                 {"short.safetensors", "3 bytes", "too short"}));
  EXPECT_TRUE(test::throws_with<CheckpointError>([&] { Reader r(dir + "/absent.safetensors"); },
                                                 {"absent.safetensors", "cannot open"}));
}

TEST(Safetensors, WriterRefusesDuplicatesAndBadNames) {
  std::vector<float> x(2);
  Writer w;
  w.add_f32("a", x.data(), {2});
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { w.add_f32("a", x.data(), {2}); }, {"'a' added twice"}));
  EXPECT_TRUE(test::throws_with<ConfigError>([&] { w.add_f32("__metadata__", x.data(), {2}); }, {"bad tensor name"}));
  EXPECT_TRUE(test::throws_with<IoError>([&] { w.write("/nonexistent-dir/x.safetensors"); }, {"/nonexistent-dir/x.safetensors"}));
}

}  // namespace
}  // namespace mlkv
