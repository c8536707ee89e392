// Llama (LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification): RMSNorm, rotary embeddings, SwiGLU and
// grouped-query attention, names as in transformers. Its blocks are the shared decoder (decoder.cpp).
#include "family.h"

namespace tunekit {
namespace {

const Family& kLlama = register_family(decoder_family("llama"));

}  // namespace
}  // namespace tunekit
