"""Log-likelihood of continuations after a prompt with transformers, the plain way: one full forward per
prompt + continuation, summing log_softmax at the positions that predict the continuation's tokens.

usage: loglikelihood.py MODEL_DIR PROMPT_JSON CONTINUATIONS_JSON     (prints one JSON line)"""
import json
import sys

import torch
import transformers

folder, prompt, continuations = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
config = transformers.AutoConfig.from_pretrained(folder)
model = getattr(transformers, config.architectures[0]).from_pretrained(folder, dtype=torch.float32).eval()
scores = []
with torch.no_grad():
    for c in continuations:
        ids = torch.tensor([prompt + c])
        logp = model(input_ids=ids).logits[0].log_softmax(-1)
        scores.append(sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(c)))
print(json.dumps({"scores": scores}))
