"""How far the words alone go on a built-in set, with no language model: the scale for the finetuning rows.

scikit-learn's TF-IDF logistic regression (C 0.3, 1, 3, 10) and naive Bayes on binary counts (alpha 0.1, 0.3, 1), each
on word unigrams and on unigrams + bigrams; the setting with the best validation accuracy gives the test accuracy.
The splits are the ones `tunekit finetune --data builtin:NAME` trains and tests on (read through dist/, so build first).

    .venv/bin/python scripts/experiment/words_only.py imdb-sentences
"""
import json
import pathlib
import re
import subprocess
import sys

from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPLITS = ("train", "validation", "test")
DUMP = (
    "const s = require('./dist/data').builtinSplits(process.argv[1]);"
    f"console.log(JSON.stringify(Object.fromEntries({list(SPLITS)}.map((k) => [k, s[k].rows]))))"
)


def settings():
    for ngrams in ((1, 1), (1, 2)):
        for C in (0.3, 1, 3, 10):
            yield (
                f"TF-IDF logistic regression, n-grams {ngrams}, C {C}",
                TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True),
                LogisticRegression(C=C, max_iter=2000),
            )
        for alpha in (0.1, 0.3, 1):
            yield (
                f"naive Bayes, n-grams {ngrams}, alpha {alpha}",
                CountVectorizer(ngram_range=ngrams, binary=True),
                MultinomialNB(alpha=alpha),
            )


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: words_only.py imdb-sentences|sentiment-sentences")
    name = sys.argv[1]
    dump = subprocess.run(["node", "-e", DUMP, name], cwd=ROOT, capture_output=True, text=True)
    if dump.returncode != 0:
        reason = next((line for line in dump.stderr.splitlines() if re.match(r"\w*Error: ", line)), dump.stderr.strip())
        sys.exit(f"words_only: cannot read builtin:{name}: {reason.strip()}")
    rows = json.loads(dump.stdout)
    text = {s: [r["text"] for r in rows[s]] for s in SPLITS}
    label = {s: [r["label"] for r in rows[s]] for s in SPLITS}
    best = None
    for setting, vectorizer, classifier in settings():
        x = vectorizer.fit_transform(text["train"])
        classifier.fit(x, label["train"])
        val = classifier.score(vectorizer.transform(text["validation"]), label["validation"])
        if best is None or val > best[0]:
            best = (val, setting, classifier.score(vectorizer.transform(text["test"]), label["test"]))
    val, setting, test = best
    print(f"{name}: {setting}: validation {100 * val:.1f}%, test {100 * test:.1f}%")


if __name__ == "__main__":
    main()
