// A strict JSON reader for exactly what a safetensors header holds, and the checks on its entries. Written for
// hostile input: bounded nesting, integers parsed without overflow, sizes multiplied with overflow checks.
#include "safetensors_header.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <memory>

#include "api.h"

namespace tunekit {

namespace {

// JavaScript's safe-integer bound: the TS layer receives offsets and shapes as exact doubles.
constexpr int64_t kMaxSafe = (int64_t(1) << 53) - 1;
constexpr int kMaxDepth = 32;

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  bool integral = false;  // a number written without fraction or exponent, within int64
  int64_t integer = 0;
  std::string text;
  std::vector<Json> items;        // an array's, or an object's values
  std::vector<std::string> keys;  // an object's keys, one per item
};

class Parser {
 public:
  Parser(const char* s, size_t n, const std::string& where) : s_(s), n_(n), where_(where) {}

  Json document() {
    Json v = value(0);
    skip_space();
    if (i_ != n_) fail("unexpected data after the JSON value");
    return v;
  }

 private:
  const char* s_;
  size_t n_;
  size_t i_ = 0;
  const std::string& where_;

  [[noreturn]] void fail(const std::string& why) const {
    throw Error("E_FORMAT", where_ + ": header is not valid JSON (" + why + " at byte " + std::to_string(i_) + ")");
  }
  void skip_space() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) i_++;
  }
  bool take(char c) {
    skip_space();
    if (i_ < n_ && s_[i_] == c) {
      i_++;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!take(c)) fail(std::string("expected '") + c + "'");
  }
  void literal(const char* word) {
    for (const char* w = word; *w; w++, i_++)
      if (i_ >= n_ || s_[i_] != *w) fail("unknown literal");
  }

  Json value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    skip_space();
    if (i_ >= n_) fail("unexpected end");
    Json v;
    char c = s_[i_];
    if (c == '{') {
      i_++;
      v.kind = Json::Object;
      if (take('}')) return v;
      do {
        skip_space();
        v.keys.push_back(string());
        expect(':');
        v.items.push_back(value(depth + 1));
      } while (take(','));
      expect('}');
    } else if (c == '[') {
      i_++;
      v.kind = Json::Array;
      if (take(']')) return v;
      do v.items.push_back(value(depth + 1));
      while (take(','));
      expect(']');
    } else if (c == '"') {
      v.kind = Json::String;
      v.text = string();
    } else if (c == 't' || c == 'f') {
      v.kind = Json::Bool;
      v.boolean = c == 't';
      literal(v.boolean ? "true" : "false");
    } else if (c == 'n') {
      literal("null");
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      number(v);
    } else {
      fail("unexpected character");
    }
    return v;
  }

  void number(Json& v) {
    v.kind = Json::Number;
    bool negative = s_[i_] == '-';
    if (negative) i_++;
    if (i_ >= n_ || s_[i_] < '0' || s_[i_] > '9') fail("a number needs digits");
    if (s_[i_] == '0' && i_ + 1 < n_ && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9') fail("leading zero");
    bool fits = true;
    int64_t x = 0;
    for (; i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9'; i_++) {
      int d = s_[i_] - '0';
      if (x > (std::numeric_limits<int64_t>::max() - d) / 10) fits = false;
      if (fits) x = x * 10 + d;
    }
    bool fraction = false;
    if (i_ < n_ && s_[i_] == '.') {
      fraction = true;
      i_++;
      if (i_ >= n_ || s_[i_] < '0' || s_[i_] > '9') fail("a fraction needs digits");
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    }
    if (i_ < n_ && (s_[i_] == 'e' || s_[i_] == 'E')) {
      fraction = true;
      i_++;
      if (i_ < n_ && (s_[i_] == '+' || s_[i_] == '-')) i_++;
      if (i_ >= n_ || s_[i_] < '0' || s_[i_] > '9') fail("an exponent needs digits");
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    }
    v.integral = fits && !fraction;
    v.integer = negative ? -x : x;
  }

  static void utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  uint32_t hex4() {
    if (i_ + 4 > n_) fail("short \\u escape");
    uint32_t cp = 0;
    for (int k = 0; k < 4; k++, i_++) {
      char h = s_[i_];
      int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (d < 0) fail("bad \\u escape");
      cp = cp * 16 + uint32_t(d);
    }
    return cp;
  }

  std::string string() {
    if (i_ >= n_ || s_[i_] != '"') fail("expected a string");
    i_++;
    std::string out;
    while (true) {
      if (i_ >= n_) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[i_++]);
      if (c == '"') return out;
      if (c < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += char(c);
        continue;
      }
      if (i_ >= n_) fail("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (i_ + 2 > n_ || s_[i_] != '\\' || s_[i_ + 1] != 'u') fail("unpaired surrogate");
            i_ += 2;
            uint32_t low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired surrogate");
          }
          utf8(out, cp);
          break;
        }
        default:
          fail("unknown escape");
      }
    }
  }
};

// A non-negative integer no larger than JavaScript can hold exactly.
bool is_size(const Json& v) { return v.kind == Json::Number && v.integral && v.integer >= 0 && v.integer <= kMaxSafe; }

}  // namespace

int64_t safetensors_dtype_size(const std::string& d) {
  static const std::map<std::string, int64_t> sizes = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},     {"I32", 4},
                                                       {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t available, int64_t file_size, const std::string& where) {
  auto bad = [&](const std::string& why) { return Error("E_FORMAT", where + ": " + why); };
  if (file_size < 8 || available < 8) throw bad("file is " + std::to_string(file_size) + " bytes, too short to be safetensors");
  uint64_t n = 0;
  for (int k = 7; k >= 0; k--) n = (n << 8) | bytes[k];
  if (n > uint64_t(file_size - 8))
    throw bad("header length " + std::to_string(n) + " is larger than the file (" + std::to_string(file_size) +
              " bytes): truncated or corrupt");
  if (n > uint64_t(kMaxSafetensorsHeader))
    throw bad("header length " + std::to_string(n) + " exceeds " + std::to_string(kMaxSafetensorsHeader) + " bytes");
  if (available < 8 + n) throw bad("header is cut short");
  Json root = Parser(reinterpret_cast<const char*>(bytes) + 8, size_t(n), where).document();
  if (root.kind != Json::Object) throw bad("header is not a JSON object");

  const int64_t data_start = 8 + int64_t(n);
  const int64_t data_len = file_size - data_start;
  SafetensorsHeader h;
  std::map<std::string, bool> seen;
  for (size_t f = 0; f < root.keys.size(); f++) {
    const std::string& name = root.keys[f];
    const Json& v = root.items[f];
    if (seen[name]) throw bad("'" + name + "' appears twice in the header");
    seen[name] = true;
    if (name == "__metadata__") {
      if (v.kind != Json::Object) throw bad("__metadata__ is not a JSON object");
      for (size_t k = 0; k < v.keys.size(); k++) {
        if (v.items[k].kind != Json::String) throw bad("__metadata__ entry '" + v.keys[k] + "' is not a string");
        h.metadata[v.keys[k]] = v.items[k].text;
      }
      continue;
    }
    if (v.kind != Json::Object) throw bad("tensor '" + name + "' has no description");
    const Json *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    for (size_t k = 0; k < v.keys.size(); k++) {
      if (v.keys[k] == "dtype") dtype = &v.items[k];
      if (v.keys[k] == "shape") shape = &v.items[k];
      if (v.keys[k] == "data_offsets") offsets = &v.items[k];
    }
    int64_t elem = dtype && dtype->kind == Json::String ? safetensors_dtype_size(dtype->text) : 0;
    if (elem == 0)
      throw bad("tensor '" + name + "' has unknown dtype " + (dtype && dtype->kind == Json::String ? "\"" + dtype->text + "\"" : "(none)"));
    if (!shape || shape->kind != Json::Array || !std::all_of(shape->items.begin(), shape->items.end(), is_size))
      throw bad("tensor '" + name + "' has an invalid shape");
    if (!offsets || offsets->kind != Json::Array || offsets->items.size() != 2 || !is_size(offsets->items[0]) ||
        !is_size(offsets->items[1]) || offsets->items[1].integer < offsets->items[0].integer)
      throw bad("tensor '" + name + "' has invalid data_offsets");
    HeaderTensor t{name, dtype->text, {}, 0, 0};
    int64_t bytes_needed = elem;
    bool overflow = false;
    for (const auto& d : shape->items) {
      t.shape.push_back(d.integer);
      if (d.integer != 0 && bytes_needed > kMaxSafe / d.integer)
        overflow = true;
      else
        bytes_needed *= d.integer;
    }
    int64_t b = offsets->items[0].integer, e = offsets->items[1].integer;
    if (overflow || e - b != bytes_needed)
      throw bad("tensor '" + name + "' spans " + std::to_string(e - b) + " bytes but " + t.dtype + " " + "[" +
                [&] {
                  std::string s;
                  for (size_t k = 0; k < t.shape.size(); k++) s += (k ? "," : "") + std::to_string(t.shape[k]);
                  return s;
                }() +
                "] needs " + (overflow ? std::string("more than the file can hold") : std::to_string(bytes_needed)));
    if (e > data_len)
      throw bad("tensor '" + name + "' ends at byte " + std::to_string(e) + ", past the end of the data (" + std::to_string(data_len) +
                " bytes): truncated file?");
    t.begin = data_start + b;
    t.end = data_start + e;
    h.tensors.push_back(std::move(t));
  }
  std::vector<const HeaderTensor*> spans;
  for (const auto& t : h.tensors)
    if (t.end > t.begin) spans.push_back(&t);
  std::sort(spans.begin(), spans.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t k = 1; k < spans.size(); k++)
    if (spans[k]->begin < spans[k - 1]->end) throw bad("tensors '" + spans[k - 1]->name + "' and '" + spans[k]->name + "' overlap");
  return h;
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error("E_FILE", "cannot open " + path);
  if (!S_ISREG(st.st_mode)) throw Error("E_FILE", path + " is not a file");
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) throw Error("E_FILE", "cannot open " + path);
  int64_t size = int64_t(st.st_size);
  uint8_t prefix[8] = {0};
  size_t got = size >= 8 ? std::fread(prefix, 1, 8, f.get()) : 0;
  if (got < 8) return parse_safetensors_header(prefix, got, size, path);  // throws "too short"
  uint64_t n = 0;
  for (int k = 7; k >= 0; k--) n = (n << 8) | prefix[k];
  // Checked before allocating: a lying length must not size a buffer.
  if (n > uint64_t(size - 8) || n > uint64_t(kMaxSafetensorsHeader)) return parse_safetensors_header(prefix, 8, size, path);
  std::vector<uint8_t> buf(8 + size_t(n));
  std::copy(prefix, prefix + 8, buf.begin());
  if (n > 0 && std::fread(buf.data() + 8, 1, size_t(n), f.get()) != size_t(n)) throw Error("E_FILE", path + ": read failed");
  return parse_safetensors_header(buf.data(), buf.size(), size, path);
}

}  // namespace tunekit
