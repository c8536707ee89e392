"""TRL GRPOTrainer's loss on fixed completions (test/rlhf.test.ts).

  grpo.py OUT_DIR   saves a gpt2 policy and a different gpt2 reference to OUT_DIR/{policy,reference}; for fixed prompts
                    (one length), completions, rewards and perturbed old log-probabilities, prints the advantages TRL's
                    formula gives and GRPOTrainer._compute_loss's loss, kl and clip ratios for each loss type.
"""
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import PAD, configs, randomise  # noqa: E402
from rlhf import tokenizer  # noqa: E402

from datasets import Dataset  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

G = 3
PROMPTS = [[5, 6, 7]] * G + [[10, 11, 12]] * G
COMPLETIONS = [[8, 9, 2], [20, 21], [30, 31, 32, 33], [40, 2], [41, 42, 43], [44]]
REWARDS = [1.0, 0.2, -0.5, 0.7, 0.7, -1.0]
SETTINGS = dict(beta=0.04, epsilon=0.2, epsilon_high=0.28, temperature=0.9)


def main(out):
    from trl import GRPOConfig, GRPOTrainer

    config = configs()["gpt2"]
    models = {}
    for name, seed in [("policy", 41), ("reference", 42)]:
        torch.manual_seed(0)
        m = GPT2LMHeadModel(config)
        randomise(m, seed=seed)
        m.save_pretrained(os.path.join(out, name))
        models[name] = m
    # Loaded back, so that the config names a path (TRL builds its own reference from it; ours replaces it).
    policy = GPT2LMHeadModel.from_pretrained(os.path.join(out, "policy"))
    reference = models["reference"].eval()

    rewards = torch.tensor(REWARDS).view(-1, G)
    advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    advantages = advantages.view(-1)
    C = max(len(c) for c in COMPLETIONS)
    prompt_ids = torch.tensor(PROMPTS)
    completion_ids = torch.tensor([c + [PAD] * (C - len(c)) for c in COMPLETIONS])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (C - len(c)) for c in COMPLETIONS])
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([torch.ones_like(prompt_ids), completion_mask], 1)

    result = {"settings": SETTINGS, "prompts": PROMPTS, "completions": COMPLETIONS, "rewards": REWARDS,
              "advantages": advantages.tolist()}
    for loss_type in ["dapo", "grpo", "bnpo"]:
        with tempfile.TemporaryDirectory() as tmp:
            args = GRPOConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False, beta=SETTINGS["beta"],
                              epsilon=SETTINGS["epsilon"], epsilon_high=SETTINGS["epsilon_high"],
                              temperature=SETTINGS["temperature"], loss_type=loss_type, num_generations=G,
                              per_device_train_batch_size=G, steps_per_generation=1)
            trainer = GRPOTrainer(model=policy, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                                  train_dataset=Dataset.from_dict({"prompt": ["a"] * G}), processing_class=tokenizer())
            trainer.ref_model = reference
            trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which is not run here
            with torch.no_grad():
                policy.eval()
                logps = trainer._get_per_token_logps_and_entropies(policy, input_ids, attention_mask, C)[0]
                ref = trainer._get_per_token_logps_and_entropies(reference, input_ids, attention_mask, C)[0]
            # Old log-probabilities a little off the current ones, so that ratios leave 1 and both clips act.
            g = torch.Generator().manual_seed(5)
            old = logps + torch.randn(logps.shape, generator=g) * 0.4
            policy.train()
            inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
                      "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
                      "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum()}
            loss = trainer._compute_loss(policy, inputs)
            m = trainer._metrics["train"]
            result[loss_type] = {"loss": loss.item(), "kl": m["kl"][-1], "clip_ratio/low_mean": m["clip_ratio/low_mean"][-1],
                                 "clip_ratio/high_mean": m["clip_ratio/high_mean"][-1],
                                 "clip_ratio/region_mean": m["clip_ratio/region_mean"][-1]}
            result["old_logps"] = old.tolist()
    print(json.dumps(result))


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    main(sys.argv[1])
