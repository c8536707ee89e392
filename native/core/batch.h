// Plain batches (api.h) as tensors on the model's device, and tensors back as plain float arrays.
#pragma once
#include "model.h"

namespace tunekit {

struct Tensors {
  torch::Tensor ids, mask, labels;
};
// Checks ids against the vocabulary and the sequence (with the context's virtual and prefix tokens) against the
// family's position table.
Tensors to_tensors(const ForwardContext& c, const Batch& b);
FloatArray to_floats(const torch::Tensor& t);

}  // namespace tunekit
