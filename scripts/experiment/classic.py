"""The Python twin of one classic-strategies run: transformers (+ scikit-learn for the feature-based approach) on the
same weights, token ids, batch order and hyperparameters that scripts/experiment/classic-run.ts wrote into WORK.

usage: classic.py MODEL_DIR WORK_DIR      (prints one JSON line)"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import transformers
from sklearn.linear_model import LogisticRegression

def pad(rows, pad_id):
    n = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    return ids, mask


def pad_id_of(config):
    return config.pad_token_id if config.pad_token_id is not None else 0


def embed(model, rows, pooling, bs=32):
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), bs):
            ids, mask = pad(rows[i:i + bs], pad_id_of(model.config))
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            if pooling == "cls":
                out.append(h[:, 0])
            else:
                last = mask.sum(1) - 1
                out.append(h[torch.arange(h.shape[0]), last])
    return torch.cat(out).double().numpy()


def main():
    model_dir, work = sys.argv[1], sys.argv[2]
    d = json.load(open(os.path.join(work, "data.json")))
    torch.manual_seed(d["seed"])
    strategy = d["strategy"]
    train_ids = [r[0] for r in d["train"]]
    train_y = [r[1] for r in d["train"]]
    test_ids = [r[0] for r in d["test"]]
    test_y = np.array([r[1] for r in d["test"]])
    start = time.time()
    if strategy == "features":
        model = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        config = model.config
        pooling = "cls" if config.model_type == "distilbert" else "last"
        xtr, xte = embed(model, train_ids, pooling), embed(model, test_ids, pooling)
        clf = LogisticRegression(C=d.get("C") or 1.0, max_iter=1000).fit(xtr, train_y)
        acc = float(clf.score(xte, test_y))
        trainable = int(clf.coef_.size + clf.intercept_.size)
        steps = None
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(os.path.join(work, "init"), dtype=torch.float32)
        names = [n for n, _ in model.named_parameters()]
        if strategy == "adapter":
            raise SystemExit("adapter: PEFT has no Houlsby adapters; there is no Python twin")
        if strategy in ("lora", "prefix", "prompt"):
            # PEFT refuses to load a prompt-learning adapter as trainable; building it from the config and loading the
            # weights gives the same trainable model.
            from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
            from safetensors.torch import load_file
            adapter = os.path.join(work, "init-adapter")
            cfg = PeftConfig.from_pretrained(adapter)
            cfg.inference_mode = False
            model = get_peft_model(model, cfg)
            set_peft_model_state_dict(model, load_file(os.path.join(adapter, "adapter_model.safetensors")))
            train_names = {n for n, p in model.named_parameters() if p.requires_grad}
        elif strategy == "full":
            train_names = set(names)
        else:
            head = ("pre_classifier.", "classifier.") if model.config.model_type == "distilbert" else ("score.",)
            blocks = d.get("unfreezeLastBlocks", 0) or 0
            layers = getattr(model.config, "n_layers", None) or getattr(model.config, "n_layer", None) or model.config.num_hidden_layers
            extra = []
            for i in range(layers - blocks, layers):
                extra += {"distilbert": [f"distilbert.transformer.layer.{i}."], "gpt2": [f"transformer.h.{i}."], "llama": [f"model.layers.{i}."]}[model.config.model_type]
            if blocks > 0:
                extra += {"distilbert": [], "gpt2": ["transformer.ln_f."], "llama": ["model.norm."]}[model.config.model_type]
            train_names = {n for n in names if n.startswith(head) or any(n.startswith(e) for e in extra)}
        for n, p in model.named_parameters():
            p.requires_grad_(n in train_names)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        trainable = sum(p.numel() for _, p in params)
        groups = [{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": 0.01},
                  {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=d["lr"], betas=(0.9, 0.999), eps=1e-8)
        bs = d["batchSize"]
        per_epoch = (len(train_ids) + bs - 1) // bs
        total = per_epoch * d["epochs"]
        sched = transformers.get_linear_schedule_with_warmup(opt, round(0.1 * total), total)
        pid = pad_id_of(model.config)
        model.train()
        steps = 0
        for epoch in range(d["epochs"]):
            order = d["orders"][epoch]
            for b in range(per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                ids, mask = pad([train_ids[i] for i in idx], pid)
                labels = torch.tensor([train_y[i] for i in idx])
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                steps += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test_ids), bs):
                ids, mask = pad(test_ids[i:i + bs], pid)
                pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).numpy()
                correct += int((pred == test_y[i:i + bs]).sum())
        acc = correct / len(test_ids)
    wall = time.time() - start
    print(json.dumps({"side": "python", "strategy": strategy, "seed": d["seed"], "test": {"accuracy": acc, "examples": len(test_ids)},
                      "trainableParameters": trainable, "wallTimeMs": wall * 1000, "steps": steps,
                      "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
