"""Does a masked LM use its context? Two measurements on the held-out split of the pretraining corpus, apart from
tunekit (transformers' DistilBertForMaskedLM reads the folder):

- masked-token accuracy: BERT's 15% of each held-out span masked ([MASK] in place of the token, a fixed seed), the
  model's top-1 and top-5 against the truth, beside a unigram model's (the training split's most frequent tokens,
  whatever the context). A model that fills every blank with function words scores what the unigram model scores.
- attention: per layer and head, the entropy of the attention rows over a paragraph's tokens (its first 128) as a fraction of the
  uniform row's (1.0: every token attends to all alike, so a position learns only the bag of words around it), and
  the mean weight on the previous and the next token (uniform: 1 / length).

    .venv/bin/python scripts/experiment/mlm_diagnostics.py MODEL_DIR

Needs .cache/pretrain from a `npm run pretrain -- --model tiny-distilbert` run (the corpus split).
"""
import collections
import os
import random
import sys

import torch
from transformers import DistilBertForMaskedLM, PreTrainedTokenizerFast

from mlm_curve import corpus_ids, corpus_paragraphs, spans

BATCH, MASK_RATE = 64, 0.15


def masked_token_accuracy(model, tok, special):
    train, held_out = corpus_ids(tok, "train.txt"), spans(corpus_ids(tok, "validation.txt"))
    unigram = [t for t, _ in collections.Counter(t for t in train if t not in special).most_common(5)]
    cls, sep, mask = (tok.convert_tokens_to_ids(t) for t in ["[CLS]", "[SEP]", "[MASK]"])
    r = random.Random(1)
    n = top1 = top5 = uni1 = uni5 = 0
    with torch.no_grad():
        for i in range(0, len(held_out), BATCH):
            inputs, labels = [], []
            for span in held_out[i : i + BATCH]:
                x, y = [cls] + span + [sep], [-100] * (len(span) + 2)
                for j in range(1, len(x) - 1):
                    if r.random() < MASK_RATE:
                        x[j], y[j] = mask, x[j]
                inputs.append(x)
                labels.append(y)
            labels = torch.tensor(labels)
            at = labels != -100
            top = model(input_ids=torch.tensor(inputs)).logits[at].topk(5, -1).indices
            truth = labels[at]
            n += len(truth)
            top1 += (top[:, 0] == truth).sum().item()
            top5 += (top == truth[:, None]).any(1).sum().item()
            uni1 += (truth == unigram[0]).sum().item()
            uni5 += torch.isin(truth, torch.tensor(unigram)).sum().item()
    pct = lambda k: f"{100 * k / n:.1f}%"
    print(f"masked-token accuracy on {n} held-out masks: model top-1 {pct(top1)}, top-5 {pct(top5)}; "
          f"unigram ({', '.join(tok.convert_ids_to_tokens(unigram))}) top-1 {pct(uni1)}, top-5 {pct(uni5)}")


def attention(model, tok):
    enc = tok(corpus_paragraphs("validation.txt")[:64], truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.no_grad():
        rows = model(**enc, output_attentions=True).attentions
    mask = enc["attention_mask"]
    length = mask.sum(1).float()
    for i, a in enumerate(rows):  # [batch, heads, T, T]
        entropy = -(a.clamp_min(1e-12).log() * a).sum(-1)  # [batch, heads, T]; padded keys have no weight
        per_row = (entropy * mask[:, None, :]).sum(-1) / mask[:, None, :].sum(-1)
        relative = (per_row / length.log()[:, None]).mean(0)
        t = torch.arange(a.size(-1))
        pairs = (mask[:, 1:] * mask[:, :-1]).float()[:, None, :]  # both tokens real
        previous = ((a[:, :, t[1:], t[:-1]] * pairs).sum() / (pairs.sum() * a.size(1))).item()
        following = ((a[:, :, t[:-1], t[1:]] * pairs).sum() / (pairs.sum() * a.size(1))).item()
        print(f"layer {i}: entropy / uniform by head {', '.join(f'{v:.2f}' for v in relative.tolist())}; "
              f"weight on the previous token {previous:.3f}, on the next {following:.3f}")
    print(f"(uniform rows: 1.00, and 1 / length = {(1 / length).mean().item():.3f} on each neighbour)")


def main():
    model_dir = sys.argv[1]
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"), pad_token="[PAD]")
    model = DistilBertForMaskedLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    special = set(tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    masked_token_accuracy(model, tok, special)
    attention(model, tok)


if __name__ == "__main__":
    main()
