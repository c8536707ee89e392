"""Is a trained head on frozen [CLS] vectors better than a logistic regression on the same vectors, apart from tunekit?

docs/results-notes.md asks this of the head < features rows: the [CLS] vectors of a model are computed once with
transformers, then scikit-learn's logistic regression (the C grid of the experiment) and DistilBERT's classification
head (pre_classifier, ReLU, classifier; normal(0, 0.02) init; AdamW, 10% warm-up, linear decay, clipping at 1, batch
16, the experiment's recipe) are fitted on growing parts of the training split, at 3 seeds each.

    .venv/bin/python scripts/experiment/head_vs_features.py MODEL_DIR DATA_JSON

DATA_JSON is a run's data.json under .cache/experiment/classic (its train/validation/test are [ids, label] pairs).
"""
import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel


def cls_vectors(model, examples):
    out = []
    with torch.no_grad():
        for i in range(0, len(examples), 64):
            batch = examples[i : i + 64]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for j, (seq, _) in enumerate(batch):
                ids[j, : len(seq)] = torch.tensor(seq)
                mask[j, : len(seq)] = 1
            out.append(model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])
    return torch.cat(out), torch.tensor([label for _, label in examples])


def train_head(x, y, lr, epochs, seed):
    torch.manual_seed(seed)
    dim = x.shape[1]
    head = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.ReLU(), torch.nn.Linear(dim, 2))
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.02) if p.dim() == 2 else torch.nn.init.zeros_(p)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(y) + 15) // 16)
    warm = max(1, int(0.1 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / warm if s < warm else max(0.0, (steps - s) / (steps - warm)))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 16):
            idx = order[i : i + 16]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            sched.step()
    return head


def main():
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(sys.argv[1]).eval()
    data = json.load(open(sys.argv[2]))
    x, y = {}, {}
    for split in ("train", "validation", "test"):
        x[split], y[split] = cls_vectors(model, data[split])
    acc = lambda predict, split: float((predict(x[split]) == y[split].numpy()).mean())
    n_all = len(y["train"])
    print("| training examples | method | setting chosen on validation | test accuracy % (seeds 1-3) |")
    print("|---|---|---|---|")
    for n in sorted({n_all // 4, n_all // 2, n_all}):
        rows = {"logistic regression": [], "head": []}
        for seed in (1, 2, 3):
            pick = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:n]
            xs, ys = x["train"][pick], y["train"][pick]
            best = None
            for C in (0.1, 1, 10):
                lr = LogisticRegression(C=C, max_iter=5000).fit(xs.numpy(), ys.numpy())
                val = acc(lambda a: lr.predict(a.numpy()), "validation")
                if best is None or val > best[0]:
                    best = (val, f"C {C}", acc(lambda a: lr.predict(a.numpy()), "test"))
            rows["logistic regression"].append(best)
            best = None
            for lr_ in (1e-3, 3e-3, 1e-2):
                for epochs in (3, 10, 30):
                    head = train_head(xs, ys, lr_, epochs, seed)
                    with torch.no_grad():
                        predict = lambda a: head(a).argmax(1).numpy()
                        val = acc(predict, "validation")
                        if best is None or val > best[0]:
                            best = (val, f"lr {lr_}, {epochs} epochs", acc(predict, "test"))
            rows["head"].append(best)
        for method, runs in rows.items():
            tests = [100 * t for _, _, t in runs]
            print(f"| {n} | {method} | {'; '.join(s for _, s, _ in runs)} | {', '.join(f'{t:.1f}' for t in tests)} (mean {np.mean(tests):.1f}) |")


if __name__ == "__main__":
    main()
