"""A plain-PyTorch reference for tunekit's Houlsby adapters (PEFT has none): forward hooks on transformers' modules
add y + up(act(down(y))) after each adapted projection, with the weights of a tunekit adapter folder.

usage: houlsby.py BASE_DIR ADAPTER_DIR ROWS_JSON   (prints logits, loss and the gradient of every adapter tensor)"""
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from common import ATTENTION_MASK, CLASS_LABELS, INPUT_IDS  # noqa: E402

import transformers  # noqa: E402
from transformers.activations import ACT2FN  # noqa: E402

base_dir, adapter_dir, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
config = transformers.AutoConfig.from_pretrained(base_dir)
model = getattr(transformers, config.architectures[0]).from_pretrained(base_dir, dtype=torch.float32)
cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
tensors = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
act = ACT2FN[cfg["non_linearity"]]
for p in model.parameters():
    p.requires_grad_(False)
params = {}
modules = dict(model.named_modules())
for key, t in tensors.items():
    name = key[len("base_model.model."):]
    if ".adapter." in name:
        params[key] = t.clone().requires_grad_(True)
    else:  # a modules_to_save copy: it replaces the head's tensor and trains
        mod, attr = name.rsplit(".", 1)
        p = getattr(modules[mod], attr)
        p.data.copy_(t)
        p.requires_grad_(True)
        params[key] = p


def hook_for(prefix):
    def hook(module, inputs, output):
        h = act(torch.nn.functional.linear(output, params[prefix + "down.weight"], params[prefix + "down.bias"]))
        return output + torch.nn.functional.linear(h, params[prefix + "up.weight"], params[prefix + "up.bias"])
    return hook


for mod in sorted({k[len("base_model.model."):].split(".adapter.")[0] for k in tensors if ".adapter." in k}):
    modules[mod].register_forward_hook(hook_for(f"base_model.model.{mod}.adapter."))
model.eval()
ids = torch.tensor([INPUT_IDS[r] for r in rows])
mask = torch.tensor([ATTENTION_MASK[r] for r in rows])
labels = torch.tensor([CLASS_LABELS[r] for r in rows]) if config.architectures[0].endswith("ForSequenceClassification") else ids.masked_fill(mask == 0, -100)
out = model(input_ids=ids, attention_mask=mask, labels=labels)
out.loss.backward()
print(json.dumps({"loss": out.loss.item(), "logits": out.logits.reshape(-1).tolist(), "shape": list(out.logits.shape),
                  "grads": {k: p.grad.reshape(-1).tolist() for k, p in params.items()}}))
