// safetensors reading and writing for weights, adapters and optimizer state.
#pragma once
#include "model.h"

namespace tunekit {

// The tensors of `entries` from the file at `path`, each checked against the file's size and its dtype and shape.
std::vector<torch::Tensor> read_safetensors(const std::string& path, const std::vector<TensorEntry>& entries);
// Writes the named tensors to `path` (fsynced); the caller renames the file into place.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

}  // namespace tunekit
