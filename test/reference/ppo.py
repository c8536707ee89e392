"""A PyTorch twin of one PPO step (test/rlhf.test.ts), written from the formulas of TRL's PPOv2 trainer (TRL 0.11-0.28,
deleted from TRL since; Huang et al. 2024, "The N Implementation Details of RLHF with PPO") on transformers models.

  ppo.py OUT_DIR   saves a gpt2 policy and a different gpt2 reference to OUT_DIR/{policy,reference}, runs one PPO step
                   (2 epochs, so that clipping is active) on fixed queries, responses and scores, and prints the
                   statistics and every parameter after the step, the value head included (TRL's v_head.summary.*).
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import PAD, configs, flat, randomise  # noqa: E402

from transformers import GPT2LMHeadModel  # noqa: E402

QUERIES = [[5, 6, 7], [10, 11], [13, 14, 15, 16]]
RESPONSES = [[8, 9, 2], [12, 40, 41, 42, 43], [17, 18]]
SCORES = [1.5, -0.5, 0.25]
SETTINGS = dict(temperature=0.7, kl_coef=0.05, gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
                ppo_epochs=2, lr=1e-2, max_grad_norm=1.0)


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask, shift_mean=True):
    mean = masked_mean(x, mask)
    centred = x - mean
    var = (centred ** 2 * mask).sum() / (mask.sum() - 1)
    w = centred * torch.rsqrt(var + 1e-8)
    return w if shift_mean else w + mean


def ppo_step(policy, reference, v_head, opt, queries, responses, scores, s):
    """One PPO step on scored responses; returns TRL's statistics and the second epoch's clip fraction."""
    B, R = len(queries), max(len(r) for r in responses)
    full = [q + r for q, r in zip(queries, responses)]
    seq = max(len(f) for f in full)
    ids = torch.tensor([f + [PAD] * (seq - len(f)) for f in full])
    attn = torch.tensor([[1] * len(f) + [0] * (seq - len(f)) for f in full])
    mask = torch.zeros(B, R)
    index = torch.zeros(B, R, dtype=torch.long)  # response token t of row i is predicted at shifted query_len - 1 + t
    for i, (q, r) in enumerate(zip(queries, responses)):
        mask[i, : len(r)] = 1
        index[i] = torch.clamp(torch.arange(R) + len(q) - 1, max=seq - 2)
    scores = torch.tensor(scores, dtype=torch.float32)

    def run(model, with_values):
        o = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
        logits = o.logits[:, :-1].float() / s["temperature"]
        resp_logits = logits.gather(1, index.unsqueeze(-1).expand(B, R, logits.size(-1)))
        targets = ids[:, 1:].gather(1, index)
        logprobs = resp_logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        values = v_head(o.hidden_states[-1]).squeeze(-1)[:, :-1].gather(1, index) if with_values else None
        return logprobs, values, resp_logits

    with torch.no_grad():
        policy.eval()
        old_logprobs, old_values, _ = run(policy, True)
        ref_logprobs, _, _ = run(reference, False)
    old_logprobs, old_values, ref_logprobs = old_logprobs * mask, old_values * mask, ref_logprobs * mask

    kl = (old_logprobs - ref_logprobs) * mask
    non_score = -s["kl_coef"] * kl
    rewards = non_score.clone()
    lengths = mask.sum(1).long()
    rewards[torch.arange(B), lengths - 1] += scores
    advantages = torch.zeros(B, R)
    last = torch.zeros(B)
    for t in reversed(range(R)):
        nextv = old_values[:, t + 1] if t + 1 < R else torch.zeros(B)
        delta = rewards[:, t] + s["gamma"] * nextv - old_values[:, t]
        last = delta + s["gamma"] * s["lam"] * last
        advantages[:, t] = last
    returns = advantages + old_values
    advantages = masked_whiten(advantages, mask) * mask

    params = [p for p in policy.parameters() if p.requires_grad] + list(v_head.parameters())
    per = []
    for _ in range(s["ppo_epochs"]):  # dropout stays off, as TRL's PPOv2
        logprobs, vpred, resp_logits = run(policy, True)
        vclipped = old_values + (vpred - old_values).clamp(-s["cliprange_value"], s["cliprange_value"])
        vf1, vf2 = (vpred - returns) ** 2, (vclipped - returns) ** 2
        vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
        log_ratio = logprobs - old_logprobs
        ratio = log_ratio.exp()
        pg1, pg2 = -advantages * ratio, -advantages * ratio.clamp(1 - s["cliprange"], 1 + s["cliprange"])
        pg_loss = masked_mean(torch.max(pg1, pg2), mask)
        loss = pg_loss + s["vf_coef"] * vf_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s["max_grad_norm"])
        opt.step()
        with torch.no_grad():
            probs = resp_logits.softmax(-1)
            entropy = torch.logsumexp(resp_logits, -1) - (probs * resp_logits).sum(-1)
            per.append({"policy/approxkl": 0.5 * masked_mean(log_ratio ** 2, mask).item(),
                        "policy/clipfrac": masked_mean((pg2 > pg1).float(), mask).item(),
                        "loss/policy": pg_loss.item(), "loss/value": vf_loss.item(),
                        "val/clipfrac": masked_mean((vf2 > vf1).float(), mask).item(),
                        "policy/entropy": masked_mean(entropy, mask).item(),
                        "val/ratio": masked_mean(ratio, mask).item()})
    avg = lambda k: sum(p[k] for p in per) / len(per)  # noqa: E731
    stats = {
        "objective/kl": kl.sum(1).mean().item(),
        "objective/entropy": (-old_logprobs * mask).sum(1).mean().item(),
        "objective/non_score_reward": non_score.sum(1).mean().item(),
        "objective/rlhf_reward": non_score.sum(1).mean().item() + scores.mean().item(),
        "objective/scores": scores.mean().item(),
        "policy/approxkl_avg": avg("policy/approxkl"), "policy/clipfrac_avg": avg("policy/clipfrac"),
        "loss/policy_avg": avg("loss/policy"), "loss/value_avg": avg("loss/value"),
        "val/clipfrac_avg": avg("val/clipfrac"), "policy/entropy_avg": avg("policy/entropy"), "val/ratio": avg("val/ratio"),
    }
    return stats, per[-1]["policy/clipfrac"]


def value_head(width):
    """TRL's value head: Linear(hidden, 1), zero at the start."""
    v_head = torch.nn.Linear(width, 1)
    torch.nn.init.zeros_(v_head.weight)
    torch.nn.init.zeros_(v_head.bias)
    return v_head


def main(out):
    s = SETTINGS
    config = configs()["gpt2"]
    models = {}
    for name, seed in [("policy", 31), ("reference", 32)]:
        torch.manual_seed(0)
        m = GPT2LMHeadModel(config)
        randomise(m, seed=seed)
        m.save_pretrained(os.path.join(out, name))
        models[name] = m
    policy, reference = models["policy"], models["reference"].eval()
    v_head = value_head(config.n_embd)
    opt = torch.optim.AdamW(list(policy.parameters()) + list(v_head.parameters()), lr=s["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    stats, clipfrac = ppo_step(policy, reference, v_head, opt, QUERIES, RESPONSES, SCORES, s)
    named = {n: flat(p) for n, p in policy.named_parameters()}
    named.update({f"v_head.summary.{n}": flat(p) for n, p in v_head.named_parameters()})
    print(json.dumps({"settings": s, "queries": QUERIES, "responses": RESPONSES, "scores": SCORES, "stats": stats,
                      "clipfrac_epoch2": clipfrac, "params": named}))


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    main(sys.argv[1])
