"""transformers' greedy generate() (with its KV cache) on a model folder, stopping at EOS.

usage: generate.py MODEL_DIR IDS_JSON MAX_NEW_TOKENS   (IDS_JSON: one unpadded row; prints the full ids)"""
import json
import sys

import torch
import transformers

folder, ids, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
config = transformers.AutoConfig.from_pretrained(folder)
model = getattr(transformers, config.architectures[0]).from_pretrained(folder, dtype=torch.float32).eval()
x = torch.tensor([ids])
with torch.no_grad():
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                         pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0)
print(json.dumps({"ids": out[0].tolist()}))
