"""PEFT prefix-tuning references for the parity tests (usage: common.peft_reference).

SPEC: num_virtual_tokens, rows, seed; PREFIX_TUNING without the projection.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import peft_reference  # noqa: E402

from peft import PrefixTuningConfig  # noqa: E402


def config(task, spec, _):
    return PrefixTuningConfig(task_type=task, num_virtual_tokens=spec["num_virtual_tokens"])


def grad_key(n):
    return "prompt_embeddings" if "prompt_encoder" in n else n.replace(".modules_to_save.default", "")


if __name__ == "__main__":
    peft_reference(config, grad_key)
