"""PEFT IA3 references for the parity tests (usage: common.peft_reference).

SPEC: target_modules, feedforward_modules, seed. The learned vectors start at N(1, 0.2) instead of one, so the adapter
changes the logits and every gradient is non-trivial.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import peft_reference  # noqa: E402

from peft import IA3Config  # noqa: E402


def config(task, spec, _):
    return IA3Config(task_type=task, target_modules=spec["target_modules"], feedforward_modules=spec["feedforward_modules"])


def perturbed(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "ia3_l" in n:
                p.normal_(1, 0.2)


if __name__ == "__main__":
    peft_reference(config, lambda n: n.replace(".default", "").replace(".modules_to_save", ""), perturbed)
