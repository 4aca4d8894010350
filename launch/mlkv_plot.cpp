// mlkv-plot: loss and validation-loss curves of one or several runs, from their metrics.jsonl,
// rendered to a PNG without any library: a line rasterizer, a 5x7 bitmap font for the axes and
// legend, and a minimal PNG encoder (zlib "stored" blocks, CRC-32 per chunk, Adler-32 trailer).
//
//   mlkv-plot OUT.png RUN_DIR|metrics.jsonl ... [--size WxH] [--title TEXT] [--chain]
//
// Training loss is drawn solid, validation loss dashed with square markers, one colour per run.
// When a step appears twice (a resumed run re-did it), the later line wins. --chain draws each run
// after the previous one on the step axis (pretraining, then uptraining from its conversion).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/checkpoint.h"  // crc32_update: the PNG chunk CRC is the same CRC-32
#include "core/errors.h"

namespace {

struct Rgb {
  uint8_t r, g, b;
};

// ---- 5x7 font: each glyph is 7 rows of 5 bits (bit 4 = leftmost column). Letters are drawn in
// upper case.
const std::map<char, std::array<uint8_t, 7>>& font() {
  static const std::map<char, std::array<uint8_t, 7>> f = {
      {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}}, {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
      {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}}, {'D', {0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E}},
      {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
      {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}}, {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
      {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
      {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}}, {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
      {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}}, {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
      {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
      {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}}, {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
      {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
      {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
      {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
      {'Y', {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04}}, {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
      {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
      {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
      {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
      {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
      {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
      {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}}, {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
      {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F}}, {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}},
      {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}}, {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
      {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}}, {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
      {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}}, {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}},
      {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}}, {' ', {0, 0, 0, 0, 0, 0, 0}},
      {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}},
  };
  return f;
}

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(static_cast<size_t>(w) * h * 3, 255) {}
  int width() const { return w_; }
  int height() const { return h_; }

  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    uint8_t* p = &px_[(static_cast<size_t>(y) * w_ + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  void rect(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) set(x, y, c);
  }
  // Bresenham, `thick` pixels wide; dashed lines draw `dash` pixels on, `dash` off.
  void line(double fx0, double fy0, double fx1, double fy1, Rgb c, int thick = 1, int dash = 0) {
    int x0 = static_cast<int>(std::lround(fx0)), y0 = static_cast<int>(std::lround(fy0));
    const int x1 = static_cast<int>(std::lround(fx1)), y1 = static_cast<int>(std::lround(fy1));
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (;;) {
      if (dash == 0 || (dash_phase_++ / dash) % 2 == 0) rect(x0 - thick / 2, y0 - thick / 2, x0 + (thick - 1) / 2, y0 + (thick - 1) / 2, c);
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }
  void reset_dash() { dash_phase_ = 0; }
  // Text with its top-left corner at (x, y); each font pixel becomes scale x scale.
  void text(int x, int y, const std::string& s, Rgb c, int scale = 2) {
    for (char ch : s) {
      const char up = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      auto it = font().find(up);
      const auto& g = it != font().end() ? it->second : font().at('?');
      for (int row = 0; row < 7; ++row)
        for (int col = 0; col < 5; ++col)
          if (g[row] >> (4 - col) & 1) rect(x + col * scale, y + row * scale, x + col * scale + scale - 1, y + row * scale + scale - 1, c);
      x += 6 * scale;
    }
  }
  static int text_width(const std::string& s, int scale = 2) { return static_cast<int>(s.size()) * 6 * scale - scale; }
  const std::vector<uint8_t>& pixels() const { return px_; }

 private:
  int w_, h_;
  std::vector<uint8_t> px_;
  int dash_phase_ = 0;
};

// ---- PNG: signature, IHDR (8-bit RGB), one IDAT holding a zlib stream of stored blocks, IEND.
void put_be32(std::string& s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>(v >> (8 * i)));
}

void put_chunk(std::string& png, const char* type, const std::string& data) {
  put_be32(png, static_cast<uint32_t>(data.size()));
  const std::string body = std::string(type, 4) + data;
  png += body;
  put_be32(png, mlkv::crc32_update(0, body.data(), body.size()));
}

std::string encode_png(const Canvas& c) {
  std::string raw;  // each scanline: filter type 0 (None), then RGB bytes
  const auto& px = c.pixels();
  for (int y = 0; y < c.height(); ++y) {
    raw.push_back(0);
    raw.append(reinterpret_cast<const char*>(&px[static_cast<size_t>(y) * c.width() * 3]), static_cast<size_t>(c.width()) * 3);
  }
  std::string z = {0x78, 0x01};  // deflate, 32K window, no preset dictionary; (0x7801 % 31 == 0)
  for (size_t off = 0; off < raw.size() || off == 0;) {
    const size_t n = std::min<size_t>(65535, raw.size() - off);
    const bool last = off + n >= raw.size();
    z.push_back(last ? 1 : 0);  // BFINAL, BTYPE = 00 (stored)
    z.push_back(static_cast<char>(n & 0xFF));
    z.push_back(static_cast<char>(n >> 8));
    z.push_back(static_cast<char>(~n & 0xFF));
    z.push_back(static_cast<char>((~n >> 8) & 0xFF));
    z.append(raw, off, n);
    off += n;
    if (last) break;
  }
  uint32_t a = 1, b = 0;  // Adler-32 of the uncompressed data
  for (unsigned char ch : raw) {
    a = (a + ch) % 65521;
    b = (b + a) % 65521;
  }
  put_be32(z, b << 16 | a);

  std::string ihdr;
  put_be32(ihdr, static_cast<uint32_t>(c.width()));
  put_be32(ihdr, static_cast<uint32_t>(c.height()));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, truecolour, deflate, adaptive filters, no interlace
  std::string png = "\x89PNG\r\n\x1a\n";
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", z);
  put_chunk(png, "IEND", "");
  return png;
}

// ---- data

struct Series {
  std::string name;
  std::map<int64_t, double> loss, val_loss;
};

Series read_run(const std::string& arg) {
  namespace fs = std::filesystem;
  const fs::path p = fs::is_directory(arg) ? fs::path(arg) / "metrics.jsonl" : fs::path(arg);
  std::ifstream in(p);
  if (!in) throw mlkv::ConfigError(p.string() + ": cannot read (give a run's log directory or its metrics.jsonl)");
  Series s;
  s.name = (fs::is_directory(arg) ? fs::path(arg) : p.parent_path()).lexically_normal().filename().string();
  if (s.name.empty()) s.name = fs::absolute(arg).lexically_normal().parent_path().filename().string();
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) {
      std::cerr << "mlkv-plot: " << p.string() << ":" << line_no << ": skipping a line that is not a metrics record\n";
      continue;
    }
    const int64_t step = j["step"].get<int64_t>();
    if (j.contains("loss") && j["loss"].is_number()) s.loss[step] = j["loss"].get<double>();
    if (j.contains("val_loss") && j["val_loss"].is_number()) s.val_loss[step] = j["val_loss"].get<double>();
  }
  return s;
}

// Tick spacing of 1, 2 or 5 x 10^k giving about `target` ticks over `span`.
double nice_step(double span, int target) {
  const double raw = span / target, mag = std::pow(10.0, std::floor(std::log10(raw))), f = raw / mag;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

std::string tick_label(double v, double step) {
  char buf[32];
  if (std::fabs(v) >= 10000 && step >= 1000) std::snprintf(buf, sizeof buf, "%gK", v / 1000);
  else {
    const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  }
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out, title = "loss (solid) and val loss (dashed)";
  std::vector<std::string> runs;
  int W = 1000, H = 600;
  bool chain = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << "usage: mlkv-plot OUT.png RUN_DIR|metrics.jsonl ... [--size WxH] [--title TEXT] [--chain]\n";
      return 0;
    } else if (a == "--size" && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%dx%d", &W, &H) != 2 || W < 200 || H < 150 || W > 8000 || H > 8000) {
        std::cerr << "mlkv-plot: --size wants WxH between 200x150 and 8000x8000\n";
        return mlkv::kExitBadInput;
      }
    } else if (a == "--chain") {
      chain = true;
    } else if (a == "--title" && i + 1 < argc) {
      title = argv[++i];
    } else if (a.rfind("-", 0) == 0) {
      std::cerr << "mlkv-plot: unknown option " << a << "\nusage: mlkv-plot OUT.png RUN_DIR... [--size WxH] [--title TEXT] [--chain]\n";
      return mlkv::kExitBadInput;
    } else if (out.empty()) {
      out = a;
    } else {
      runs.push_back(a);
    }
  }
  if (out.empty() || runs.empty()) {
    std::cerr << "usage: mlkv-plot OUT.png RUN_DIR|metrics.jsonl ... [--size WxH] [--title TEXT] [--chain]\n";
    return mlkv::kExitBadInput;
  }
  try {
    std::vector<Series> series;
    int64_t offset = 0;
    for (const auto& r : runs) {
      Series s = read_run(r);
      if (chain) {
        Series shifted{s.name, {}, {}};
        for (const auto& [step, v] : s.loss) shifted.loss[step + offset] = v;
        for (const auto& [step, v] : s.val_loss) shifted.val_loss[step + offset] = v;
        int64_t last = offset;
        for (const auto* m : {&shifted.loss, &shifted.val_loss})
          if (!m->empty()) last = std::max(last, m->rbegin()->first);
        offset = last;
        s = std::move(shifted);
      }
      series.push_back(std::move(s));
    }
    double x_max = 1, y_min = INFINITY, y_max = -INFINITY;
    for (const auto& s : series)
      for (const auto* m : {&s.loss, &s.val_loss})
        for (const auto& [step, v] : *m) {
          x_max = std::max(x_max, static_cast<double>(step));
          y_min = std::min(y_min, v);
          y_max = std::max(y_max, v);
        }
    if (!std::isfinite(y_min)) throw mlkv::ConfigError("no loss values in " + runs.front() + " (is it a run's log directory?)");
    if (y_max - y_min < 1e-9) {
      y_min -= 0.5;
      y_max += 0.5;
    }
    const double pad = 0.05 * (y_max - y_min);
    y_min -= pad;
    y_max += pad;

    Canvas c(W, H);
    const int left = 90, right = W - 20, top = 50, bottom = H - 60;
    auto X = [&](double step) { return left + (right - left) * step / x_max; };
    auto Y = [&](double v) { return bottom - (bottom - top) * (v - y_min) / (y_max - y_min); };
    const Rgb black{0, 0, 0}, grid{225, 225, 225}, grey{90, 90, 90};

    const double ys = nice_step(y_max - y_min, 6), xs = nice_step(x_max, 8);
    for (double v = std::ceil(y_min / ys) * ys; v <= y_max; v += ys) {
      c.line(left, Y(v), right, Y(v), grid);
      const std::string l = tick_label(v, ys);
      c.text(left - 8 - Canvas::text_width(l), static_cast<int>(Y(v)) - 7, l, grey);
    }
    for (double v = 0; v <= x_max + 1e-9; v += xs) {
      c.line(X(v), top, X(v), bottom, grid);
      const std::string l = tick_label(v, xs);
      c.text(static_cast<int>(X(v)) - Canvas::text_width(l) / 2, bottom + 10, l, grey);
    }
    c.line(left, top, left, bottom, black, 2);
    c.line(left, bottom, right, bottom, black, 2);
    c.text((left + right - Canvas::text_width("step")) / 2, H - 26, "step", black);
    c.text(10, top - 30, "loss", black);
    c.text((left + right - Canvas::text_width(title)) / 2, 14, title, black);

    const Rgb palette[] = {{31, 119, 180}, {214, 39, 40}, {44, 160, 44}, {255, 127, 14},
                           {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {23, 190, 207}};
    for (size_t i = 0; i < series.size(); ++i) {
      const Series& s = series[i];
      const Rgb col = palette[i % 8];
      bool have_prev = false;
      double px = 0, py = 0;
      for (const auto& [step, v] : s.loss) {
        if (have_prev) c.line(px, py, X(step), Y(v), col, 2);
        px = X(step);
        py = Y(v);
        have_prev = true;
      }
      c.reset_dash();
      have_prev = false;
      for (const auto& [step, v] : s.val_loss) {
        if (have_prev) c.line(px, py, X(step), Y(v), col, 2, 6);
        px = X(step);
        py = Y(v);
        have_prev = true;
        c.rect(static_cast<int>(px) - 3, static_cast<int>(py) - 3, static_cast<int>(px) + 3, static_cast<int>(py) + 3, col);
      }
      // Legend, top right: a swatch and the run's name.
      const int ly = top + 10 + static_cast<int>(i) * 22, lx = right - 16 - Canvas::text_width(s.name) - 30;
      c.rect(lx, ly + 5, lx + 20, ly + 8, col);
      c.text(lx + 28, ly, s.name, col);

      char line[256];
      std::snprintf(line, sizeof line, "%s: %zu loss points (last %.4f), %zu val points (last %.4f)\n", s.name.c_str(),
                    s.loss.size(), s.loss.empty() ? NAN : s.loss.rbegin()->second, s.val_loss.size(),
                    s.val_loss.empty() ? NAN : s.val_loss.rbegin()->second);
      std::cout << line;
    }

    const std::string png = encode_png(c);
    std::ofstream f(out, std::ios::binary);
    f.write(png.data(), static_cast<std::streamsize>(png.size()));
    if (!f) throw mlkv::IoError(out + ": cannot write");
    std::cout << "wrote " << out << " (" << W << "x" << H << ")\n";
    return 0;
  } catch (const mlkv::Error& e) {
    std::cerr << "mlkv-plot: " << e.what() << "\n";
    return e.exit_code();
  }
}
