"""PEFT LoRA references for the parity tests.

  peft_lora.py create BASE_DIR OUT_DIR SPEC_JSON
      Wraps the base model in a PEFT LoRA (r, alpha, target_modules, use_rslora from SPEC), gives lora_B seeded random
      values (so that lora_A's gradient is not zero), saves the adapter to OUT_DIR, and prints the logits, loss and
      every trainable tensor's gradient on the test batch, plus PEFT's trainable-parameter count.
  peft_lora.py load BASE_DIR ADAPTER_DIR
      PeftModel.from_pretrained(base, ADAPTER_DIR) and prints its logits on the test batch.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import base_model, peft_batch as batch  # noqa: E402

from peft import LoraConfig, PeftModel, TaskType, get_peft_model  # noqa: E402


def main():
    mode, base_dir = sys.argv[1], sys.argv[2]
    base = base_model(base_dir)
    seq_cls = base.config.architectures[0].endswith("ForSequenceClassification")
    if mode == "create":
        out, spec = sys.argv[3], json.loads(sys.argv[4])
        torch.manual_seed(spec.get("seed", 0))
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM, r=spec["r"], lora_alpha=spec["alpha"],
                         lora_dropout=0.0, target_modules=spec["target_modules"], use_rslora=spec.get("use_rslora", False))
        model = get_peft_model(base, cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        model.save_pretrained(out)
        model.train()
        for m in model.modules():  # no dropout anywhere, so both sides compute the same thing
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        o = model(**batch(model))
        o.loss.backward()
        grads = {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                key = n.replace(".default", "").replace(".modules_to_save", "")
                grads[key] = p.grad.reshape(-1).tolist()
        trainable, total = model.get_nb_trainable_parameters()
        print(json.dumps({"loss": o.loss.item(), "logits": o.logits.reshape(-1).tolist(), "shape": list(o.logits.shape),
                          "grads": grads, "trainable": trainable}))
    else:
        model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
        with torch.no_grad():
            o = model(**batch(model))
        print(json.dumps({"loss": o.loss.item(), "logits": o.logits.reshape(-1).tolist(), "shape": list(o.logits.shape)}))


if __name__ == "__main__":
    main()
