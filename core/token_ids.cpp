#include "core/token_ids.h"

#include <charconv>

#include "core/errors.h"

namespace mlkv {

std::vector<int32_t> parse_token_ids(const std::string& list, int64_t vocab, const std::string& what) {
  if (list.empty()) throw ConfigError(what + ": no token ids given");
  std::vector<int32_t> out;
  size_t begin = 0;
  for (;;) {
    size_t end = list.find(',', begin);
    if (end == std::string::npos) end = list.size();
    const std::string item = list.substr(begin, end - begin);
    int64_t v = -1;
    // from_chars takes neither spaces nor a '+', and reports overflow instead of clamping
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size() || v < 0 || v >= vocab)
      throw ConfigError(what + ": item " + std::to_string(out.size()) + " \"" + item +
                        "\" is not a token id in [0, " + std::to_string(vocab) + ")");
    out.push_back(static_cast<int32_t>(v));
    if (end == list.size()) return out;
    begin = end + 1;
  }
}

}  // namespace mlkv
