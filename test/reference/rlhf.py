"""References for the preference objectives (test/rlhf.test.ts), computed by TRL's own trainers.

  rlhf.py reward OUT_DIR   a one-output gpt2 classifier saved to OUT_DIR/model; TRL RewardTrainer.compute_loss on
                           fixed chosen/rejected rows (with and without margins and centring), then one AdamW step
                           (clipping at 1, as TRL's default) from the loss with centring and margins.
  rlhf.py dpo OUT_DIR      a gpt2 policy and a different gpt2 reference saved to OUT_DIR/{policy,reference}; TRL
                           DPOTrainer._compute_loss for each loss type, then one AdamW step from the sigmoid loss.

Prints JSON: the statistics TRL logs, the loss, and every parameter after the step.
"""
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import CACHE, PAD, configs, flat, randomise  # noqa: E402

from datasets import Dataset  # noqa: E402
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

# Token ids only (no PAD among them): prompts, and completions of different lengths.
PROMPTS = [[5, 6, 7], [10, 11], [13, 14, 15, 16]]
CHOSEN = [[8, 9, 2], [12, 40, 41, 2], [17, 2]]
REJECTED = [[20, 21, 22, 23, 2], [30, 2], [50, 51, 52, 2]]
MARGINS = [0.5, 0.0, 1.5]
LR = 1e-3


def tokenizer():
    """Any tokenizer serves (the data is already ids); TRL's trainers want one for padding."""
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(CACHE, "models", "tokenizer-bpe", "tokenizer.json"))
    tok.pad_token = tok.convert_ids_to_tokens(PAD)
    tok.eos_token = tok.convert_ids_to_tokens(2)
    return tok


def rows(parts):
    """Rows right-padded with PAD, their attention mask and a completion mask (1 on the completion's tokens)."""
    seq = max(len(p) + len(c) for p, c in parts)
    ids, mask, comp = [], [], []
    for p, c in parts:
        r = p + c
        ids.append(r + [PAD] * (seq - len(r)))
        mask.append([1] * len(r) + [0] * (seq - len(r)))
        comp.append([0] * len(p) + [1] * len(c) + [0] * (seq - len(r)))
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(comp)


def step(model, loss):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
    opt.step()
    return norm, {n: flat(p) for n, p in model.named_parameters()}


def reward(out):
    from trl import RewardConfig, RewardTrainer

    config = configs()["gpt2"]
    config.num_labels = 1
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(config)
    randomise(model, seed=11)
    model.save_pretrained(os.path.join(out, "model"))
    ids, mask, _ = rows([(p, c) for p, c in zip(PROMPTS, CHOSEN)] + [(p, r) for p, r in zip(PROMPTS, REJECTED)])
    result = {}
    for name, center, margin in [("plain", None, None), ("centred", 0.01, None), ("margin", 0.01, MARGINS)]:
        with tempfile.TemporaryDirectory() as tmp:
            args = RewardConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False, center_rewards_coefficient=center, learning_rate=LR)
            data = Dataset.from_dict({"chosen_ids": [p + c for p, c in zip(PROMPTS, CHOSEN)],
                                      "rejected_ids": [p + r for p, r in zip(PROMPTS, REJECTED)]})
            trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer())
            model.train()
            inputs = {"input_ids": ids, "attention_mask": mask}
            if margin is not None:
                inputs["margin"] = torch.tensor(margin)
            loss = trainer.compute_loss(model, inputs)
            stats = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
            result[name] = {"loss": loss.item(), **stats}
            if name == "margin":
                norm, params = step(model, loss)
                result["step"] = {"grad_norm": norm, "params": params}
    return result


def dpo(out):
    from trl import DPOConfig, DPOTrainer

    config = configs()["gpt2"]
    models = {}
    for name, seed in [("policy", 21), ("reference", 22)]:
        torch.manual_seed(0)
        m = GPT2LMHeadModel(config)
        randomise(m, seed=seed)
        m.save_pretrained(os.path.join(out, name))
        models[name] = m
    policy, reference = models["policy"], models["reference"].eval()
    ids, mask, comp = rows([(p, c) for p, c in zip(PROMPTS, CHOSEN)] + [(p, r) for p, r in zip(PROMPTS, REJECTED)])
    # A placeholder data set for the constructor; the loss is computed on the rows above.
    data = Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]})
    batch = {"input_ids": ids, "attention_mask": mask, "completion_mask": comp}
    keys = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]
    result = {}
    # Every loss type on the same weights; the step (from the sigmoid loss) last.
    for loss_type, smoothing in [("hinge", 0.0), ("ipo", 0.0), ("robust", 0.2), ("sigmoid", 0.0)]:
        with tempfile.TemporaryDirectory() as tmp:
            args = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False, beta=0.3, loss_type=[loss_type], label_smoothing=smoothing,
                             learning_rate=LR)
            trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer())
            policy.train()
            loss = trainer._compute_loss(policy, batch, False)
            result[loss_type] = {"loss": loss.item(), **{k: trainer._metrics["train"][k][-1] for k in keys}}
    norm, params = step(policy, loss)
    result["step"] = {"grad_norm": norm, "params": params}
    return result


if __name__ == "__main__":
    what, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    print(json.dumps(reward(out) if what == "reward" else dpo(out)))
