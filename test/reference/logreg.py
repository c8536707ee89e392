"""Fits scikit-learn's LogisticRegression (lbfgs, L2) on features written by a test and prints the coefficients,
intercepts and accuracies as one JSON line.

usage: logreg.py FEATURES_JSON   (a file: {"dim", "C", "train": {"x": path.f32, "y": [...]}, "test": {...}})"""
import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

spec = json.load(open(sys.argv[1]))
dim = spec["dim"]


def load(part):
    x = np.fromfile(spec[part]["x"], dtype=np.float32).reshape(-1, dim).astype(np.float64)
    return x, np.array(spec[part]["y"])


xtr, ytr = load("train")
xte, yte = load("test")
clf = LogisticRegression(C=spec["C"], solver="lbfgs", max_iter=10000, tol=1e-10).fit(xtr, ytr)
print(json.dumps({"coef": clf.coef_.reshape(-1).tolist(), "intercept": clf.intercept_.tolist(),
                  "train_accuracy": clf.score(xtr, ytr), "test_accuracy": clf.score(xte, yte)}))
