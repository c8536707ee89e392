"""PEFT prompt-tuning references for the parity tests (usage: common.peft_reference).

SPEC: num_virtual_tokens, rows, seed; PROMPT_TUNING with RANDOM init.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import peft_reference  # noqa: E402

from peft import PromptTuningConfig  # noqa: E402


def config(task, spec, c):
    return PromptTuningConfig(task_type=task, num_virtual_tokens=spec["num_virtual_tokens"], token_dim=c.hidden_size,
                              num_attention_heads=c.num_attention_heads, num_layers=c.num_hidden_layers)


def grad_key(n):
    if "prompt_encoder" in n:
        return "prompt_embeddings"
    return n.replace(".modules_to_save.default", "").replace(".original_module", "")


if __name__ == "__main__":
    peft_reference(config, grad_key)
