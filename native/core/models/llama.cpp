// Llama (LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification): RMSNorm, rotary embeddings, SwiGLU and
// grouped-query attention, names as in transformers. Its blocks are the shared decoder (decoder.cpp).
#include "family.h"

namespace tunekit {
namespace {

const Family& kLlama = register_family({.name = "llama",
                                        .backbone = "model.",
                                        .word_embeddings = "embed_tokens.weight",
                                        .embeddings = {"embed_tokens"},
                                        .positions = Family::Positions::rotary,
                                        .pad_row_frozen = true,
                                        .build = decoder_build,
                                        .forward = decoder_forward});

}  // namespace
}  // namespace tunekit
