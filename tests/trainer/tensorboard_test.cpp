// TensorBoard event files: known CRC-32C values, golden protobuf bytes of one scalar event, a
// write/read round trip, and corruption (either CRC, truncation) detected by the reader.
#include "core/tensorboard.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/errors.h"
#include "trainer_test_util.h"

namespace mlkv {
namespace {

std::string only_event_file(const std::string& dir) {
  std::string found;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().find("tfevents") != std::string::npos) {
      EXPECT_TRUE(found.empty()) << "two event files in " << dir;
      found = e.path().string();
    }
  return found;
}

void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c;
  f.get(c);
  f.seekp(at);
  f.put(static_cast<char>(c ^ 0x20));
}

TEST(TensorBoard, Crc32cKnownValues) {
  EXPECT_EQ(tensorboard::crc32c("123456789", 9), 0xE3069283u);  // the standard check value
  EXPECT_EQ(tensorboard::crc32c("", 0), 0u);
  const std::string zeros(32, '\0');
  EXPECT_EQ(tensorboard::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  const uint32_t crc = tensorboard::crc32c("123456789", 9);
  EXPECT_EQ(tensorboard::masked_crc32c("123456789", 9), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

TEST(TensorBoard, ScalarEventGoldenBytes) {
  // Event{wall_time: 1.5, step: 3, summary {value {tag: "a", simple_value: 2.0}}}, as protoc encodes it.
  const std::string expected("\x09\x00\x00\x00\x00\x00\x00\xF8\x3F"  // field 1, fixed64 1.5
                             "\x10\x03"                              // field 2, varint 3
                             "\x2A\x0A"                              // field 5, 10 bytes
                             "\x0A\x08"                              //   Summary.value, 8 bytes
                             "\x0A\x01"
                             "a"                                     //     tag "a"
                             "\x15\x00\x00\x00\x40",                 //     simple_value 2.0f
                             23);
  EXPECT_EQ(tensorboard::encode_scalar_event(1.5, 3, "a", 2.0f), expected);
}

TEST(TensorBoard, WriteThenReadBack) {
  test::TempDir dir("tb");
  {
    tensorboard::EventWriter w(dir.path());
    w.add_scalar("train/loss", 4.25, 10);
    w.add_scalar("train/lr", 3e-4, 10);
    w.add_scalar("val/loss", 3.5, 1234567890123);
    w.add_session_start(20);
    w.flush();
  }
  const auto events = tensorboard::read_events(only_event_file(dir.path()));
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  ASSERT_EQ(events[1].scalars.size(), 1u);
  EXPECT_EQ(events[1].scalars[0].first, "train/loss");
  EXPECT_EQ(events[1].scalars[0].second, 4.25f);
  EXPECT_EQ(events[1].step, 10);
  EXPECT_EQ(events[2].scalars[0].second, 3e-4f);
  EXPECT_EQ(events[3].step, 1234567890123);
  EXPECT_TRUE(events[4].session_start);
  EXPECT_EQ(events[4].step, 20);
  EXPECT_GT(events[1].wall_time, 1.6e9);  // a real Unix time
}

TEST(TensorBoard, ReaderDetectsCorruption) {
  test::TempDir dir("tbbad");
  {
    tensorboard::EventWriter w(dir.path());
    w.add_scalar("train/loss", 1.0, 1);
  }
  const std::string path = only_event_file(dir.path());
  const std::string original = test::read_text(path);
  ASSERT_NO_THROW(tensorboard::read_events(path));

  flip_byte(path, 2);  // inside the first record's length
  try {
    tensorboard::read_events(path);
    FAIL() << "a corrupt length was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("length CRC"), std::string::npos) << e.what();
  }

  std::ofstream(path, std::ios::binary | std::ios::trunc) << original;
  flip_byte(path, static_cast<std::streamoff>(original.size()) - 8);  // inside the last record's data
  try {
    tensorboard::read_events(path);
    FAIL() << "corrupt data was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data CRC"), std::string::npos) << e.what();
  }

  std::ofstream(path, std::ios::binary | std::ios::trunc) << original.substr(0, original.size() - 3);
  try {
    tensorboard::read_events(path);
    FAIL() << "a truncated file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mlkv
