// libFuzzer target for the safetensors header reader (`npm run fuzz`). Any input must parse or throw tunekit::Error;
// a crash, a sanitizer report, an uncaught exception of another type or a hang is a finding.
#include <cstddef>
#include <cstdint>

#include "../core/api.h"
#include "../core/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tunekit::parse_safetensors_header(data, size, int64_t(size), "fuzz");
  } catch (const tunekit::Error&) {
  }
  return 0;
}
