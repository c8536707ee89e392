"""Is a trained head on frozen [CLS] vectors better than a logistic regression on the same vectors, apart from tunekit?

docs/results-notes.md asks this of the head < features rows: the [CLS] vectors of a model are computed once with
transformers, then scikit-learn's logistic regression (the C grid of the experiment) and DistilBERT's classification
head (pre_classifier, ReLU, classifier; normal(0, 0.02) init; the optimizer, schedule, clipping and batch size of
classic.py, the experiment's twin) are fitted on growing parts of the training split, at 3 seeds each. Two more
logistic regressions on the whole training split place the [CLS] vector between what the text holds and what the
model starts from: one on TF-IDF weights of the same token ids (a bag of words, no model), one on the model's input
embeddings averaged over the sentence (its layer 0, before any attention).

    .venv/bin/python scripts/experiment/head_vs_features.py MODEL_DIR DATA_JSON

DATA_JSON is a run's data.json under .cache/experiment/classic (its train/validation/test are [ids, label] pairs).
"""
import json
import sys

import numpy as np
import torch
import transformers
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from classic import embed, pad, pad_id_of


def cls_vectors(model, examples):
    """The [CLS] vectors and labels of [ids, label] pairs, embedded as the feature-based twin embeds them."""
    x = torch.from_numpy(embed(model, [ids for ids, _ in examples], "cls")).float()
    return x, torch.tensor([label for _, label in examples])


def mean_input_embeddings(model, examples, bs=32):
    """Each sentence's input embeddings (hidden state 0: token + position, layer-normed) averaged over its tokens."""
    out = []
    with torch.no_grad():
        for i in range(0, len(examples), bs):
            ids, mask = pad([row for row, _ in examples[i : i + bs]], pad_id_of(model.config))
            h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[0]
            m = mask.unsqueeze(-1).to(h.dtype)
            out.append((h * m).sum(1) / m.sum(1))
    return torch.cat(out).double().numpy()


def chosen_logistic_regression(x, y):
    """Test accuracy and C of the logistic regression whose C (from the experiment's grid) scores best on validation."""
    best = None
    for C in (0.1, 1, 10):
        clf = LogisticRegression(C=C, max_iter=5000).fit(x["train"], y["train"])
        val = clf.score(x["validation"], y["validation"])
        if best is None or val > best[0]:
            best = (val, C, clf.score(x["test"], y["test"]))
    return best[2], best[1]


def train_head(x, y, lr, epochs, seed):
    torch.manual_seed(seed)
    dim = x.shape[1]
    head = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.ReLU(), torch.nn.Linear(dim, 2))
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.02) if p.dim() == 2 else torch.nn.init.zeros_(p)
    # The optimizer and schedule of the experiment's twin (classic.py): no weight decay on biases, linear warm-up.
    groups = [{"params": [p for p in head.parameters() if p.dim() >= 2], "weight_decay": 0.01},
              {"params": [p for p in head.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr)
    steps = epochs * ((len(y) + 15) // 16)
    sched = transformers.get_linear_schedule_with_warmup(opt, round(0.1 * steps), steps)
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
    model = transformers.AutoModel.from_pretrained(sys.argv[1]).eval()
    data = json.load(open(sys.argv[2]))
    splits = ("train", "validation", "test")
    x, y = {}, {}
    for split in splits:
        x[split], y[split] = cls_vectors(model, data[split])
    vectors, labels = {s: x[s].numpy() for s in splits}, {s: y[s].numpy() for s in splits}
    acc = lambda predict, split: float((predict(x[split]) == y[split].numpy()).mean())
    n_all = len(y["train"])
    print("| training examples | method | setting chosen on validation | test accuracy % (seeds 1-3) |")
    print("|---|---|---|---|")
    for n in sorted({n_all // 4, n_all // 2, n_all}):
        rows = {"logistic regression": [], "head": []}
        for seed in (1, 2, 3):
            pick = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:n]
            xs, ys = x["train"][pick], y["train"][pick]
            test, C = chosen_logistic_regression({**vectors, "train": xs.numpy()}, {**labels, "train": ys.numpy()})
            rows["logistic regression"].append((None, f"C {C}", test))
            best = None
            for lr in (1e-3, 3e-3, 1e-2):
                for epochs in (3, 10, 30):
                    head = train_head(xs, ys, lr, epochs, seed)
                    with torch.no_grad():
                        predict = lambda a: head(a).argmax(1).numpy()
                        val = acc(predict, "validation")
                        if best is None or val > best[0]:
                            best = (val, f"lr {lr}, {epochs} epochs", acc(predict, "test"))
            rows["head"].append(best)
        for method, runs in rows.items():
            tests = [100 * t for _, _, t in runs]
            print(f"| {n} | {method} | {'; '.join(s for _, s, _ in runs)} | {', '.join(f'{t:.1f}' for t in tests)} (mean {np.mean(tests):.1f}) |")

    words = {s: [" ".join(map(str, ids)) for ids, _ in data[s]] for s in splits}
    tfidf = TfidfVectorizer(token_pattern=r"\S+").fit(words["train"])
    print("\n| logistic regression on (whole training split) | C chosen on validation | test accuracy % |")
    print("|---|---|---|")
    for name, features in (
        ("TF-IDF of the token ids (no model)", {s: tfidf.transform(words[s]) for s in splits}),
        ("the model's input embeddings, averaged", {s: mean_input_embeddings(model, data[s]) for s in splits}),
        ("the model's last [CLS] vector", vectors),
    ):
        test, C = chosen_logistic_regression(features, labels)
        print(f"| {name} | {C} | {100 * test:.1f} |")


if __name__ == "__main__":
    main()
