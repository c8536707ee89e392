// Qwen2 (Qwen2Model, Qwen2ForCausalLM, Qwen2ForSequenceClassification): the Llama decoder with biases on the query,
// key and value projections (not on the output projection), which the TS family sets through the spec's
// attention_bias / attention_out_bias. Sliding-window attention is refused there.
#include "family.h"

namespace tunekit {
namespace {

const Family& kQwen2 = register_family(decoder_family("qwen2"));

}  // namespace
}  // namespace tunekit
