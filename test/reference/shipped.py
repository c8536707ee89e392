"""Tokenises texts with transformers' AutoTokenizer and runs a shipped model with transformers (the class its
config names), printing ids, attention mask and float32 logits as one JSON line.

usage: shipped.py MODEL_DIR TEXTS_JSON"""
import json
import sys

import torch
import transformers

folder, texts = sys.argv[1], json.loads(sys.argv[2])
tok = transformers.AutoTokenizer.from_pretrained(folder)
config = transformers.AutoConfig.from_pretrained(folder)
model = getattr(transformers, config.architectures[0]).from_pretrained(folder, dtype=torch.float32).eval()
enc = tok(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
print(json.dumps({"architecture": config.architectures[0], "input_ids": enc["input_ids"].tolist(),
                  "attention_mask": enc["attention_mask"].tolist(), "shape": list(out.logits.shape),
                  "data": out.logits.reshape(-1).tolist()}))
