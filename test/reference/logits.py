"""Loads a folder with transformers (AutoModel for its `architectures`) and prints its float32 outputs on the test
batch as one JSON line: used to check that what tunekit saves, transformers reads."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import ATTENTION_MASK, INPUT_IDS  # noqa: E402

import transformers  # noqa: E402

folder = sys.argv[1]
config = transformers.AutoConfig.from_pretrained(folder)
cls = getattr(transformers, config.architectures[0])
model = cls.from_pretrained(folder, dtype=torch.float32).eval()
with torch.no_grad():
    out = model(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(ATTENTION_MASK))
t = out.logits if hasattr(out, "logits") else out.last_hidden_state
print(json.dumps({"shape": list(t.shape), "data": t.reshape(-1).tolist(), "architecture": config.architectures[0]}))
