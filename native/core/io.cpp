// safetensors: reading (every entry checked against the file before any weight changes) and atomic-ready writing.
#include "io.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "peft/method.h"

namespace tunekit {

static torch::ScalarType safetensors_dtype(const std::string& s) {
  if (s == "F32") return torch::kFloat32;
  if (s == "F16") return torch::kFloat16;
  if (s == "BF16") return torch::kBFloat16;
  throw Error("E_FORMAT", "unsupported safetensors dtype '" + s + "' (supported: F32, F16, BF16)");
}

static std::string safetensors_name(torch::ScalarType t) {
  if (t == torch::kFloat32) return "F32";
  if (t == torch::kFloat16) return "F16";
  if (t == torch::kBFloat16) return "BF16";
  if (t == torch::kUInt8) return "U8";
  if (t == torch::kInt64) return "I64";
  throw Error("E_FORMAT", "cannot store dtype " + scalar_name(t) + " in safetensors");
}

// One entry against the file: a known dtype, a non-negative shape, and a byte range inside the file that fits it.
static torch::ScalarType check_entry(const std::string& path, const TensorEntry& e, int64_t file_size) {
  auto dt = safetensors_dtype(e.dtype);
  int64_t numel = 1;
  for (auto d : e.shape) {
    require(d >= 0, "E_FORMAT", path + ": tensor '" + e.name + "' has a negative dimension");
    require(d == 0 || numel <= INT64_MAX / 8 / d, "E_FORMAT", path + ": tensor '" + e.name + "' has an impossibly large shape");
    numel *= d;
  }
  int64_t nbytes = numel * int64_t(c10::elementSize(dt));
  require(e.begin >= 0 && e.end >= e.begin && e.end <= file_size, "E_FORMAT",
          path + ": tensor '" + e.name + "' lies outside the file (truncated file or lying header)");
  require(e.end - e.begin == nbytes, "E_FORMAT",
          path + ": tensor '" + e.name + "' has " + std::to_string(e.end - e.begin) + " bytes but its dtype and shape need " +
              std::to_string(nbytes));
  return dt;
}

static std::ifstream open_for_reading(const std::string& path, int64_t& size) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  require(f.good(), "E_FILE", "cannot open '" + path + "'");
  size = f.tellg();
  return f;
}

static void read_into(std::ifstream& f, const std::string& path, const TensorEntry& e, torch::Tensor& t) {
  f.seekg(e.begin);
  f.read(static_cast<char*>(t.data_ptr()), e.end - e.begin);
  require(f.good(), "E_FILE", path + ": read failed for tensor '" + e.name + "'");
}

std::vector<torch::Tensor> read_safetensors(const std::string& path, const std::vector<TensorEntry>& entries) {
  int64_t size = 0;
  auto f = open_for_reading(path, size);
  std::vector<torch::Tensor> out;
  for (const auto& e : entries) {
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(check_entry(path, e, size)));
    read_into(f, path, e, t);
    out.push_back(t);
  }
  return out;
}

void load_safetensors(Model& m, const std::string& path, const std::vector<TensorEntry>& entries) {
  int64_t size = 0;
  auto f = open_for_reading(path, size);
  // Every entry is checked against the file and the model before any weight changes, so a bad file leaves the model
  // as it was.
  std::vector<torch::ScalarType> dtypes;
  for (const auto& e : entries) {
    dtypes.push_back(check_entry(path, e, size));
    const auto& p = m.stored(e.name);
    require(p.sizes() == c10::IntArrayRef(e.shape), "E_SHAPE",
            path + ": tensor '" + e.name + "' has shape " + shape_str(e.shape) + " but config.json implies " + shape_str(p.sizes()));
  }
  // Then tensor by tensor, straight into the parameter where its layout allows: the peak stays near one copy of the
  // weights (plus the largest tensor whose dtype or device differs), never two.
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < entries.size(); i++) {
    auto p = m.stored(entries[i].name).detach();
    if (p.device().is_cpu() && p.is_contiguous() && p.scalar_type() == dtypes[i]) {
      read_into(f, path, entries[i], p);
      continue;
    }
    auto t = torch::empty(entries[i].shape, torch::TensorOptions().dtype(dtypes[i]));
    read_into(f, path, entries[i], t);
    p.copy_(t);
  }
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::ostringstream h;
  h << "{\"__metadata__\":{\"format\":\"pt\"}";
  int64_t offset = 0;
  std::vector<torch::Tensor> cpu;
  for (const auto& [name, t] : tensors) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    int64_t n = c.numel() * int64_t(c.element_size());
    h << ",\"" << name << "\":{\"dtype\":\"" << safetensors_name(c.scalar_type()) << "\",\"shape\":" << shape_str(c.sizes())
      << ",\"data_offsets\":[" << offset << "," << offset + n << "]}";
    offset += n;
    cpu.push_back(c);
  }
  h << "}";
  std::string header = h.str();
  while (header.size() % 8) header += ' ';
  FILE* f = std::fopen(path.c_str(), "wb");
  require(f != nullptr, "E_FILE", "cannot write '" + path + "'");
  uint64_t len = header.size();
  bool ok = std::fwrite(&len, 8, 1, f) == 1 && std::fwrite(header.data(), 1, len, f) == len;
  for (const auto& c : cpu) {
    size_t n = c.numel() * c.element_size();
    ok = ok && (n == 0 || std::fwrite(c.data_ptr(), 1, n, f) == n);
  }
  ok = ok && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  require(ok, "E_FILE", "write failed for '" + path + "' (disk full?)");
}

void save_safetensors(Model& m, const std::string& path, const std::vector<std::string>& names, const std::vector<std::string>& keys,
                      const std::string& dtype) {
  if (!keys.empty() && keys.size() != names.size()) throw Error("E_ARG", "save: keys must pair one to one with names");
  // Floating tensors in the asked dtype ("": each as stored); integer buffers as they are.
  auto as = [&](const torch::Tensor& t) { return dtype.empty() || !t.is_floating_point() ? t : t.to(parse_dtype(dtype)); };
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  const auto& list = names.empty() ? m.order : names;
  for (size_t i = 0; i < list.size(); i++) {
    const auto& name = list[i];
    const auto& key = keys.empty() ? name : keys[i];
    if (name.rfind('@', 0) == 0) {  // "@<adapter>:<what>": a tensor the adapter computes for PEFT's file
      auto colon = name.find(':');
      require(colon != std::string::npos, "E_ARG", "save: '" + name + "' must read @<adapter>:<tensor>");
      const auto* a = m.adapter(name.substr(1, colon - 1));
      require(a != nullptr, "E_ARG", "save: '" + name + "' names no adapter");
      torch::NoGradGuard g;
      tensors.emplace_back(key, as(a->exported(m, name.substr(colon + 1))).contiguous());
      continue;
    }
    tensors.emplace_back(key, as(m.stored(name)));  // the stored tensor itself, never an adapter's stand-in
  }
  write_safetensors(path, tensors);
}

}  // namespace tunekit
