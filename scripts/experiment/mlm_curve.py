"""The masked-LM pretraining curve of transformers' DistilBertForMaskedLM on tunekit's pretraining corpus, to set beside
`npm run pretrain -- --model tiny-distilbert --sentence-objective none` (its metrics.jsonl): the same tokenizer, spans
of 125 tokens shown as [CLS] span [SEP], BERT's 15% masking (80/10/10), AdamW (betas 0.9/0.98, weight decay 0.01 on
matrices), warm-up then cosine, batch 32, clipping at 1.0, bf16 autocast; held-out loss on 64 fixed masked spans.

  .venv/bin/python scripts/experiment/mlm_curve.py STEPS SCHEDULE_STEPS LR [--sinusoidal]

STEPS are trained of a schedule over SCHEDULE_STEPS (7000 for the run above). Needs .cache/pretrain from a
`npm run pretrain -- --model tiny-distilbert` run (the corpus and the tokenizer).
"""
import math
import os
import random
import sys

import torch
from transformers import DistilBertConfig, DistilBertForMaskedLM, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", ".cache", "pretrain")
SPAN, BATCH, VOCAB, WARMUP = 125, 32, 8192, 150


def corpus_paragraphs(name):
    """One split of the pretraining corpus (train.txt or validation.txt), a paragraph a line."""
    return [l for l in open(os.path.join(ROOT, "corpus", name)).read().split("\n") if l]


def corpus_ids(tok, name):
    """One split of the pretraining corpus as one stream of token ids, paragraph after paragraph."""
    return [t for enc in tok(corpus_paragraphs(name), add_special_tokens=False)["input_ids"] for t in enc]


def spans(ids):
    return [ids[i : i + SPAN] for i in range(0, len(ids) - SPAN + 1, SPAN)]


def main():
    steps, schedule, lr = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(ROOT, "tiny-distilbert", "tokenizer", "tokenizer.json"))

    train, held_out = spans(corpus_ids(tok, "train.txt")), spans(corpus_ids(tok, "validation.txt"))
    held_out = held_out[:: max(1, len(held_out) // 64)][:64]
    cls, sep, mask = (tok.convert_tokens_to_ids(t) for t in ["[CLS]", "[SEP]", "[MASK]"])
    special = {tok.convert_tokens_to_ids(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]}

    def masked(span, r):
        ids = [cls] + span + [sep]
        inputs, labels = list(ids), [-100] * len(ids)
        for i, t in enumerate(ids):
            if t in special or r.random() >= 0.15:
                continue
            labels[i] = t
            x = r.random()
            if x < 0.8:
                inputs[i] = mask
            elif x < 0.9:
                inputs[i] = r.randrange(VOCAB)
        return inputs, labels

    def tensors(pairs):
        return torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])

    r = random.Random(1000)
    eval_ids, eval_labels = tensors([masked(s, r) for s in held_out])
    config = DistilBertConfig(
        vocab_size=VOCAB, max_position_embeddings=128, dim=256, n_layers=4, n_heads=4, hidden_dim=1024,
        dropout=0.0, attention_dropout=0.0, pad_token_id=0, sinusoidal_pos_embds="--sinusoidal" in sys.argv,
    )
    model = DistilBertForMaskedLM(config)
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98),
    )
    warmup = min(WARMUP, math.ceil(schedule / 10))
    rate = lambda s: s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, schedule - warmup)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    r = random.Random(0)
    for step in range(1, steps + 1):
        drawn = [r.randrange(len(train)) for _ in range(BATCH)]
        ids, labels = tensors([masked(train[i], r) for i in drawn])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 250 == 0:
            model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                held = model(input_ids=eval_ids, labels=eval_labels).loss.item()
            model.train()
            print(f"step {step}: training loss {loss.item():.3f}, held-out loss {held:.3f}", flush=True)


if __name__ == "__main__":
    main()
