"""bf16 mixed precision as a transformers user runs it: the forward under torch.autocast('cpu', dtype=torch.bfloat16),
backward and AdamW outside it, float32 master weights.

  autocast.py OUT_DIR [STEPS]
      For gpt2 and llama (causal LM) and distilbert (sequence classification): a randomised model saved to
      OUT_DIR/<name>, then STEPS (default 50) AdamW steps (lr 1e-3, no weight decay) on the test batch, once under
      autocast and once in float32; and the same for a PEFT LoRA adapter (r 4 on c_attn and c_fc, saved to
      OUT_DIR/gpt2-lora) over the gpt2 model. Prints each run's losses and the first forward's logits under autocast.
"""
import json
import os
import sys

import torch

from common import configs, peft_batch, randomise

LR = 1e-3


def build(name):
    import transformers

    config = configs()[name]
    cls = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM,
           "distilbert": transformers.DistilBertForSequenceClassification}[name]
    torch.manual_seed(0)
    model = cls(config)
    randomise(model, seed={"gpt2": 41, "llama": 42, "distilbert": 43}[name])
    return model


def load(folder, adapter=None):
    import transformers
    from peft import PeftModel

    config = transformers.AutoConfig.from_pretrained(folder)
    model = getattr(transformers, config.architectures[0]).from_pretrained(folder, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter, is_trainable=True) if adapter else model


def run(model, steps, autocast):
    model.train()
    batch = peft_batch(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    losses, first_logits = [], None
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(**batch)
        if first_logits is None:
            first_logits = out.logits.detach().float().reshape(-1).tolist()
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    return losses, first_logits


def main(out, steps):
    result = {}
    for name in ["gpt2", "llama", "distilbert"]:
        folder = os.path.join(out, name)
        build(name).save_pretrained(folder)
        bf16, logits = run(load(folder), steps, True)
        f32, _ = run(load(folder), steps, False)
        result[name] = {"bf16": bf16, "f32": f32, "bf16_logits": logits}

    from peft import LoraConfig, TaskType, get_peft_model

    base, adapter = os.path.join(out, "gpt2"), os.path.join(out, "gpt2-lora")
    torch.manual_seed(7)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_fc"],
                        fan_in_fan_out=True)
    get_peft_model(load(base), config).save_pretrained(adapter)
    bf16, logits = run(load(base, adapter), steps, True)
    f32, _ = run(load(base, adapter), steps, False)
    result["gpt2-lora"] = {"bf16": bf16, "f32": f32, "bf16_logits": logits}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50)
