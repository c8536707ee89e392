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
// The context of a call from the API: the model's active adapter and dropout setting, no cache.
ForwardContext call_context(const Model& m);
// One vector per row from the last hidden states: 'cls' (first token), 'mean' (over the mask, as
// sentence-transformers' mean pooling) or 'last' (last real token). Differentiable.
torch::Tensor pooled_hidden(ForwardContext& c, Tensors t, const std::string& pooling);

}  // namespace tunekit
