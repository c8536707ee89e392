// The safetensors header: the one reader of it (the addon's readSafetensorsHeader, the loaders, the fuzzer). Plain
// C++ without torch, so that the libFuzzer target (native/fuzz) builds in seconds with clang and no libtorch.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tunekit {

struct HeaderTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // absolute byte offsets in the file
};

struct SafetensorsHeader {
  std::vector<HeaderTensor> tensors;  // in the header's order
  std::map<std::string, std::string> metadata;
};

constexpr int64_t kMaxSafetensorsHeader = 100LL * 1024 * 1024;

// Bytes per element of a safetensors dtype name; 0 for a name safetensors does not define.
int64_t safetensors_dtype_size(const std::string& dtype);

// Parses and checks the header at the start of a file of `file_size` bytes whose first `available` bytes are `bytes`:
// the length prefix, the JSON, every entry's dtype, shape and byte range (inside the data, sized by dtype and shape,
// no two overlapping). Every fault is an Error with E_FORMAT naming `where` and the tensor.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t available, int64_t file_size, const std::string& where);

// The header of the file at `path` (E_FILE when it cannot be opened or is not a regular file).
SafetensorsHeader read_safetensors_header(const std::string& path);

}  // namespace tunekit
