"""In-context classification's scoring with transformers: for each prompt, each label word's log-likelihood after it
(one full forward per prompt + word), divided by the word's token count, normalised over the label words; with
calibration (Zhao et al. 2021) the content-free prompt's label probabilities divide them. Prints the class
log-probabilities of every prompt, raw and calibrated, as one JSON line.

usage: in_context.py MODEL_DIR JSON   (JSON: {"prompts": [[ids]], "free": [[ids]], "labels": [[ids]]})"""
import json
import sys

import torch
import transformers

folder, spec = sys.argv[1], json.loads(sys.argv[2])
config = transformers.AutoConfig.from_pretrained(folder)
model = getattr(transformers, config.architectures[0]).from_pretrained(folder, dtype=torch.float32).eval()


def label_log_probs(prompt):
    per = []
    with torch.no_grad():
        for word in spec["labels"]:
            logp = model(input_ids=torch.tensor([prompt + word])).logits[0].double().log_softmax(-1)
            per.append(sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(word)) / len(word))
    return torch.tensor(per, dtype=torch.float64).log_softmax(-1)


raw, calibrated = [], []
for prompt, free in zip(spec["prompts"], spec["free"]):
    lp = label_log_probs(prompt)
    raw.append(lp.tolist())
    calibrated.append((lp - label_log_probs(free)).log_softmax(-1).tolist())
print(json.dumps({"raw": raw, "calibrated": calibrated}))
