"""PEFT LoRA references for the parity tests (usage: common.peft_reference).

SPEC: r, alpha, target_modules, use_rslora, seed. LoRA's B starts at N(0, 0.05) instead of zero, so the adapter
changes the logits and every gradient is non-trivial.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import peft_reference  # noqa: E402

from peft import LoraConfig  # noqa: E402


def config(task, spec, _):
    return LoraConfig(task_type=task, r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                      target_modules=spec["target_modules"], use_rslora=spec.get("use_rslora", False))


def nonzero_b(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)


if __name__ == "__main__":
    peft_reference(config, lambda n: n.replace(".default", "").replace(".modules_to_save", ""), nonzero_b)
