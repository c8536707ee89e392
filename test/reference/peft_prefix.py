"""PEFT prefix-tuning references for the parity tests.

  peft_prefix.py create BASE_DIR OUT_DIR SPEC_JSON   (SPEC: num_virtual_tokens, rows, seed)
      PEFT PREFIX_TUNING (no projection) on the base model, saved to OUT_DIR; prints logits, loss, gradients of every
      trainable tensor on those test-batch rows, and PEFT's trainable-parameter count.
  peft_prefix.py load BASE_DIR ADAPTER_DIR ROWS_JSON
      PeftModel.from_pretrained(base, ADAPTER_DIR) and prints its logits on those rows.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import base_model, peft_batch as batch  # noqa: E402

from peft import PeftModel, PrefixTuningConfig, TaskType, get_peft_model  # noqa: E402


def main():
    mode, base_dir = sys.argv[1], sys.argv[2]
    base = base_model(base_dir)
    seq_cls = base.config.architectures[0].endswith("ForSequenceClassification")
    if mode == "create":
        out, spec = sys.argv[3], json.loads(sys.argv[4])
        torch.manual_seed(spec.get("seed", 0))
        cfg = PrefixTuningConfig(task_type=TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM, num_virtual_tokens=spec["num_virtual_tokens"])
        model = get_peft_model(base, cfg)
        model.save_pretrained(out)
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        o = model(**batch(model, spec["rows"]))
        o.loss.backward()
        grads = {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                key = "prompt_embeddings" if "prompt_encoder" in n else n.replace(".modules_to_save.default", "")
                grads[key] = p.grad.reshape(-1).tolist()
        trainable, _ = model.get_nb_trainable_parameters()
        print(json.dumps({"loss": o.loss.item(), "logits": o.logits.reshape(-1).tolist(), "shape": list(o.logits.shape),
                          "grads": grads, "trainable": trainable}))
    else:
        rows = json.loads(sys.argv[4])
        model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
        with torch.no_grad():
            o = model(**batch(model, rows))
        print(json.dumps({"loss": o.loss.item(), "logits": o.logits.reshape(-1).tolist(), "shape": list(o.logits.shape)}))


if __name__ == "__main__":
    main()
