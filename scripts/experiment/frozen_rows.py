"""A quick screen of a candidate model on the experiment's two frozen-backbone rows, in PyTorch and scikit-learn, before
a full `npm run experiment:classic`: the feature-based row (logistic regression on [CLS], C from the experiment's grid
chosen on validation) and the head row (DistilBERT's classification head on the same frozen vectors, learning rate
and epochs from the experiment's grid chosen on validation at seed 1, then test accuracy at seeds 1-3). The head is
trained on [CLS] vectors computed once (the same thing, with dropout off, as training it on the frozen model).

    .venv/bin/python scripts/experiment/frozen_rows.py MODEL_DIR DATA_JSON EPOCHS

DATA_JSON is a run's data.json (scripts/experiment/classic-run.ts writes one per run); EPOCHS the grid's epochs for
that data set, comma-separated (docs/RESULTS.md: 3,6 for imdb-sentences, 1,2 for sentiment-sentences).
"""
import json
import sys

import numpy as np
import torch
import transformers

from head_vs_features import chosen_logistic_regression, cls_vectors, train_head

LEARNING_RATES = (1e-3, 3e-3, 1e-2)


def main():
    torch.set_num_threads(1)
    model = transformers.AutoModel.from_pretrained(sys.argv[1]).eval()
    data = json.load(open(sys.argv[2]))
    epoch_grid = [int(e) for e in sys.argv[3].split(",")]
    x, y = {}, {}
    for split in ("train", "validation", "test"):
        x[split], y[split] = cls_vectors(model, data[split])
    features, C = chosen_logistic_regression({s: v.numpy() for s, v in x.items()}, {s: v.numpy() for s, v in y.items()})

    def accuracy(head, split):
        with torch.no_grad():
            return 100 * float((head(x[split]).argmax(1) == y[split]).float().mean())

    best = max(
        ((accuracy(train_head(x["train"], y["train"], lr, epochs, 1), "validation"), -i, lr, epochs)
         for i, (epochs, lr) in enumerate((e, lr) for e in epoch_grid for lr in LEARNING_RATES)),
    )
    _, _, lr, epochs = best
    tests = [accuracy(train_head(x["train"], y["train"], lr, epochs, seed), "test") for seed in (1, 2, 3)]
    print(f"features: C {C}, test {100 * features:.1f}% | head: lr {lr}, {epochs} epoch{'s' * (epochs != 1)} "
          f"(validation {best[0]:.1f}%), "
          f"test {np.mean(tests):.1f}% ({', '.join(f'{t:.1f}' for t in tests)})")


if __name__ == "__main__":
    main()
