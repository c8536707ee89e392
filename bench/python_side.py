"""The Python side of `npm run bench`: transformers 5.17 (+ peft 0.21) on the same weights, batch and seed as tunekit.

usage: python_side.py prepare WORKLOAD_JSON DIR SEED   -> writes DIR/model (random weights) and DIR/batch.json
       python_side.py run WORKLOAD_JSON DIR STEPS WARMUP -> one JSON line: first-step loss, per-step seconds, peak RSS
Reproduce the Python numbers alone: .venv/bin/python bench/python_side.py run '<workload json>' bench/.cache/<name> 20 3
"""
import contextlib
import json
import os
import resource
import sys
import time

import torch
import transformers


def prepare(w, d, seed):
    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(**w["config"])
    model = getattr(transformers, w["config"]["architectures"][0])(cfg)
    model.save_pretrained(os.path.join(d, "model"))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg.vocab_size, (w["batch"], w["seq"]), generator=g)
    if w.get("classify"):
        labels = torch.randint(0, 2, (w["batch"],), generator=g).tolist()
    elif "mask" in w:  # a masked LM's targets: a random fraction of the positions, -100 elsewhere
        labels = torch.where(torch.rand(ids.shape, generator=g) < w["mask"], ids, -100).tolist()
    else:
        labels = ids.tolist()
    json.dump({"input_ids": ids.tolist(), "labels": labels}, open(os.path.join(d, "batch.json"), "w"))


def run(w, d, steps, warmup):
    model = transformers.AutoModel.from_pretrained  # noqa: F841  (import side effects kept out of timing)
    cfg = transformers.AutoConfig.from_pretrained(os.path.join(d, "model"))
    # bf16-true: bfloat16 weights; bf16-mixed: float32 weights, each forward under torch.autocast (as a user writes it).
    dtype = torch.bfloat16 if w.get("precision") == "bf16-true" else torch.float32
    model = getattr(transformers, cfg.architectures[0]).from_pretrained(os.path.join(d, "model"), dtype=dtype)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16) if w.get("precision") == "bf16-mixed" else contextlib.nullcontext()
    b = json.load(open(os.path.join(d, "batch.json")))
    ids = torch.tensor(b["input_ids"])[: w["batch"], : w["seq"]]
    labels = torch.tensor(b["labels"])
    labels = labels[: w["batch"]] if labels.dim() == 1 else labels[: w["batch"], : w["seq"]]
    times, first = [], None
    if w["kind"] == "train":
        if "lora" in w:
            from peft import LoraConfig, get_peft_model
            lc = w["lora"]
            model = get_peft_model(model, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], target_modules=lc["target_modules"], lora_dropout=0.0))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
        for i in range(warmup + steps):
            t = time.perf_counter()
            with autocast():
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t
            if i == 0:
                first = loss.item()
            if i >= warmup:
                times.append(dt)
    elif w["kind"] == "forward":
        model.eval()
        with torch.no_grad():
            for i in range(warmup + steps):
                t = time.perf_counter()
                with autocast():
                    out = model(input_ids=ids)
                dt = time.perf_counter() - t
                if i == 0:
                    first = out.logits[0, -1, :8].tolist()
                if i >= warmup:
                    times.append(dt)
    elif w["kind"] == "grpo":
        first, times = grpo_iterations(model, w, d, steps, warmup)
    elif w["kind"] == "ppo":
        with autocast():  # the whole iteration: sampling, scoring and the updates' forwards
            first, times = ppo_iterations(model, ids, w, d, steps, warmup)
    else:  # generate, greedy, KV cache (transformers' default)
        model.eval()
        with torch.no_grad():
            for i in range(warmup + steps):
                t = time.perf_counter()
                with autocast():
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=w["new_tokens"],
                                         do_sample=False, pad_token_id=0)  # random weights: EOS (50256) is outside the vocabulary, so all tokens come
                dt = time.perf_counter() - t
                if i == 0:
                    first = out[0, -8:].tolist()
                if i >= warmup:
                    times.append(dt)
    print(json.dumps({"side": "python", "first": first, "times": times, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "params": sum(p.numel() for p in model.parameters())}))


def ppo_reward(ids):
    """The benchmark's reward: a cheap fixed function of the tokens, the same on both sides."""
    return [float(sum(r) % 7) / 7.0 for r in ids]


def ppo_iterations(model, ids, w, d, steps, warmup):
    """PPO as its Python twin (test/reference/ppo.py) runs it: one iteration is generate() with sampling (KV cache),
    then the PPO step; the reference is a frozen copy of the starting weights. The check first runs one step on
    fixed responses (the batch's next tokens) and reports its pre-update entropy."""
    import copy
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "reference"))
    from ppo import ppo_step, value_head

    s = dict(temperature=1.0, kl_coef=0.05, gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
             ppo_epochs=w["ppo_epochs"], lr=1e-5, max_grad_norm=1.0)
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    v_head = value_head(model.config.hidden_size)
    opt = torch.optim.AdamW(list(model.parameters()) + list(v_head.parameters()), lr=s["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    queries = ids[:, : w["seq"]]
    b = json.load(open(os.path.join(d, "batch.json")))
    fixed = [r[w["seq"]: w["seq"] + w["new_tokens"]] for r in b["input_ids"][: w["batch"]]]
    stats, _ = ppo_step(model, reference, v_head, opt, queries.tolist(), fixed, ppo_reward(fixed), s)
    first = stats["objective/entropy"]
    torch.manual_seed(0)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=queries, attention_mask=torch.ones_like(queries), do_sample=True, temperature=1.0,
                                 top_k=0, min_new_tokens=w["new_tokens"], max_new_tokens=w["new_tokens"], pad_token_id=0)
        responses = out[:, queries.size(1):].tolist()
        ppo_step(model, reference, v_head, opt, queries.tolist(), responses, ppo_reward([q + r for q, r in zip(queries.tolist(), responses)]), s)
        dt = time.perf_counter() - t
        if i >= warmup:
            times.append(dt)
    return first, times


GRPO_PROMPTS = ["The film opens with", "What I liked most was", "The actors in this movie", "By the end of it I felt"]
TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "test", ".cache", "models", "tokenizer-bpe", "tokenizer.json")


def grpo_iterations(model, w, d, steps, warmup):
    """TRL's GRPOTrainer.train, one optimizer step per generation batch: `batch` prompts x `generations` completions of
    exactly `new_tokens` tokens, beta 0, on the benchmark model; prompts tokenized by the suite's small BPE tokenizer
    (its ids lie inside the model's vocabulary). The check: the summed log-probability of fixed completions."""
    import tempfile
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER)
    tok.pad_token = tok.eos_token = tok.convert_ids_to_tokens(0)
    prompts = GRPO_PROMPTS[: w["batch"]]
    stamps = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=w.get("precision") == "bf16-mixed", beta=0.0, learning_rate=1e-5,
                          num_generations=w["generations"], per_device_train_batch_size=w["batch"] * w["generations"],
                          max_completion_length=w["new_tokens"], temperature=1.0, max_steps=warmup + steps,
                          generation_kwargs={"min_new_tokens": w["new_tokens"]}, save_strategy="no", logging_steps=1,
                          disable_tqdm=True, shuffle_dataset=False)
        trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [len(c) % 7 / 7.0 for c in completions],
                              args=args, train_dataset=Dataset.from_dict({"prompt": prompts * 64}), processing_class=tok)
        trainer.add_callback(Clock())
        ids = torch.tensor([tok(p)["input_ids"] + list(range(5, 5 + w["new_tokens"])) for p in prompts[:1]])
        with torch.no_grad():
            first = trainer._get_per_token_logps_and_entropies(model, ids, torch.ones_like(ids), w["new_tokens"])[0].sum().item()
        trainer.train()
    times = [stamps[i + 1] - stamps[i] for i in range(0, len(stamps) - 1, 2)][warmup:]
    return first, times


if __name__ == "__main__":
    mode, w, d = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    os.makedirs(d, exist_ok=True)
    if mode == "prepare":
        prepare(w, d, int(sys.argv[4]))
    else:
        run(w, d, int(sys.argv[4]), int(sys.argv[5]))
