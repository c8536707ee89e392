"""Builds random tiny models of every family and task with transformers, saves them, and records reference
outputs for the parity tests (test/parity.test.ts). Run by `npm test` (pretest) with .venv/bin/python."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import ATTENTION_MASK, CACHE, CLASS_LABELS, INPUT_IDS, configs, flat, lm_labels, randomise, write_json  # noqa

import transformers  # noqa: E402
from transformers import (AutoModel, BertForMaskedLM, BertForSequenceClassification, BertModel, DistilBertForMaskedLM, DistilBertForSequenceClassification,  # noqa: E402
                          DistilBertModel, GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Model,
                          LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel, Qwen2ForCausalLM,
                          Qwen2ForSequenceClassification, Qwen2Model)
from transformers.optimization import get_linear_schedule_with_warmup  # noqa: E402

# name -> (class, config key, task, save options)
CASES = {
    "gpt2-causal-lm": (GPT2LMHeadModel, "gpt2", "causal-lm", {}),
    "gpt2-seq-cls": (GPT2ForSequenceClassification, "gpt2", "sequence-classification", {}),
    "gpt2-base": (GPT2Model, "gpt2", "feature-extraction", {}),
    "llama-causal-lm": (LlamaForCausalLM, "llama", "causal-lm", {"max_shard_size": "40KB"}),
    "llama-tied-causal-lm": (LlamaForCausalLM, "llama_tied", "causal-lm", {}),
    "llama-seq-cls": (LlamaForSequenceClassification, "llama", "sequence-classification", {}),
    "llama-base": (LlamaModel, "llama", "feature-extraction", {}),
    "distilbert-seq-cls": (DistilBertForSequenceClassification, "distilbert", "sequence-classification", {}),
    "distilbert-base": (DistilBertModel, "distilbert", "feature-extraction", {}),
    "distilbert-masked-lm": (DistilBertForMaskedLM, "distilbert", "masked-lm", {}),
    "gpt2-causal-lm-f16": (GPT2LMHeadModel, "gpt2", "causal-lm", {"dtype": torch.float16}),
    "llama-causal-lm-bf16": (LlamaForCausalLM, "llama", "causal-lm", {"dtype": torch.bfloat16}),
    "bert-seq-cls": (BertForSequenceClassification, "bert", "sequence-classification", {}),
    "bert-base": (BertModel, "bert", "feature-extraction", {}),
    "bert-masked-lm": (BertForMaskedLM, "bert", "masked-lm", {}),
    "qwen2-causal-lm": (Qwen2ForCausalLM, "qwen2", "causal-lm", {}),
    "qwen2-tied-causal-lm": (Qwen2ForCausalLM, "qwen2_tied", "causal-lm", {}),
    "qwen2-seq-cls": (Qwen2ForSequenceClassification, "qwen2", "sequence-classification", {}),
    "qwen2-base": (Qwen2Model, "qwen2", "feature-extraction", {}),
}


def outputs(model, task, ids, mask, rows):
    """What tunekit is compared against: logits and loss, or the last hidden state for a base model."""
    out = {}
    with torch.no_grad():
        if task == "feature-extraction":
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            out["last_hidden_state"] = flat(h)
            out["shape"] = list(h.shape)
            return out
        labels = torch.tensor(CLASS_LABELS) if task == "sequence-classification" else torch.tensor(lm_labels())
        labels = labels[:rows]
        r = model(input_ids=ids, attention_mask=mask, labels=labels)
        out["logits"] = flat(r.logits)
        out["shape"] = list(r.logits.shape)
        out["loss"] = r.loss.item()
    return out


def build(name):
    cls, key, task, opts = CASES[name]
    config = configs()[key]
    if task == "sequence-classification":
        config.num_labels = 2
    torch.manual_seed(0)
    model = cls(config).eval()
    randomise(model, seed=len(name))
    folder = os.path.join(CACHE, "models", name)
    dtype = opts.get("dtype")
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, **({"max_shard_size": opts["max_shard_size"]} if "max_shard_size" in opts else {}))
    # The reference is what transformers computes in float32 from the saved folder (weights rounded to f16/bf16 on disk).
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    ids, mask = torch.tensor(INPUT_IDS), torch.tensor(ATTENTION_MASK)
    ref = {"task": task, "padded": outputs(model, task, ids, mask, 3),
           "unpadded": outputs(model, task, ids[:1], mask[:1], 1)}
    write_json(os.path.join(CACHE, "ref", name + ".json"), ref)


# name -> (class, config key, steps, warmup steps, eps): AdamW with weight decay, clipping and a linear schedule. One
# step needs no warmup, or its learning rate would be zero. Adam's first step is lr * g / (|g| + eps): for entries
# whose gradient is rounding noise (|g| near eps) it amplifies float32's last bit into a sizeable step, so the
# one-step cases use eps 1e-6, where such entries move in proportion to g and rounding stays rounding.
ADAMW = {
    "gpt2-adamw": (GPT2LMHeadModel, "gpt2", 3, 2, 1e-8),
    "bert-adamw": (BertForMaskedLM, "bert", 1, 0, 1e-6),
    "qwen2-adamw": (Qwen2ForCausalLM, "qwen2", 1, 0, 1e-6),
}


def adamw_steps(name):
    """AdamW steps with weight decay, clipping and linear warmup, as torch.optim + transformers do them."""
    cls, key, steps, warmup, eps = ADAMW[name]
    torch.manual_seed(0)
    model = cls(configs()[key])
    randomise(model, seed=7)
    folder = os.path.join(CACHE, "models", name)
    model.save_pretrained(folder)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.999), eps=eps)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=10)
    ids, mask, labels = torch.tensor(INPUT_IDS), torch.tensor(ATTENTION_MASK), torch.tensor(lm_labels())
    losses, norms, lrs = [], [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    params = {n: flat(p) for n, p in model.named_parameters()}
    write_json(os.path.join(CACHE, "ref", name + ".json"),
               {"losses": losses, "grad_norms": norms, "lrs": lrs, "params": params})


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello, world! Tokenizers split words into pieces.",
         "A tiny model learns from tiny data.", "Padding goes on the right, or on the left."]


def tokenizers_reference():
    """A byte-level BPE (GPT-2 style) and a WordPiece (BERT style) tokenizer trained on a few sentences, with the ids
    the Rust tokenizers library gives for each text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = TEXTS * 20 + ["the of and to in is was for on that with as by at from"] * 10
    out = {}
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    for name, tok, special in [("tokenizer-bpe", bpe, {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
                               ("tokenizer-wordpiece", wp, {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"})]:
        folder = os.path.join(CACHE, "models", name)
        PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(folder)
        out[name] = {"texts": TEXTS, "ids": [tok.encode(t).ids for t in TEXTS], "decoded": [tok.decode(tok.encode(t).ids) for t in TEXTS]}
    write_json(os.path.join(CACHE, "ref", "tokenizers.json"), out)


def main():
    names = sys.argv[1:] or list(CASES)
    stamp = os.path.join(CACHE, "ref", "STAMP")
    version = f"{transformers.__version__} {torch.__version__} {os.path.getmtime(__file__)} {os.path.getmtime(os.path.join(os.path.dirname(__file__), 'common.py'))}"
    if not sys.argv[1:] and os.path.exists(stamp) and open(stamp).read() == version:
        print("reference outputs are up to date")
        return
    for name in names:
        build(name)
    for name in ADAMW:
        adamw_steps(name)
    tokenizers_reference()
    write_json(stamp + ".json", {"version": version})
    with open(stamp, "w") as f:
        f.write(version)
    print(f"wrote reference outputs for {len(names)} models to {os.path.relpath(os.path.join(CACHE, 'ref'))}")


if __name__ == "__main__":
    main()
