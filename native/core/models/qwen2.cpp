// Qwen2 (Qwen2Model, Qwen2ForCausalLM, Qwen2ForSequenceClassification): the Llama decoder with biases on the query,
// key and value projections (not on the output projection), which the TS family sets through the spec's
// attention_bias / attention_out_bias. Sliding-window attention is refused there.
#include "family.h"

namespace tunekit {
namespace {

const Family& kQwen2 = register_family({.name = "qwen2",
                                        .backbone = "model.",
                                        .word_embeddings = "embed_tokens.weight",
                                        .embeddings = {"embed_tokens"},
                                        .positions = Family::Positions::rotary,
                                        .pad_row_frozen = true,
                                        .build = decoder_build,
                                        .forward = decoder_forward});

}  // namespace
}  // namespace tunekit
