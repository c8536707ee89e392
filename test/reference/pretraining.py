"""The pretraining task's twin in PyTorch: transformers' DistilBertForMaskedLM plus the next-sentence head (the
sequence classifier's shape: pre_classifier, ReLU, classifier on [CLS]), loss = masked-LM CE + next-sentence CE as
BertForPreTraining sums them. Reads a folder tunekit wrote with the head kept (a trainer checkpoint) and the labels
(position 0: the next-sentence label); prints both losses and every parameter's gradient as one JSON line."""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from common import ATTENTION_MASK, INPUT_IDS  # noqa: E402

from transformers import DistilBertForMaskedLM  # noqa: E402

folder, labels = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
torch.use_deterministic_algorithms(True)
model = DistilBertForMaskedLM.from_pretrained(folder, dtype=torch.float32).train()
tensors = load_file(os.path.join(folder, "model.safetensors"))
head = {k: tensors[k].clone().requires_grad_(True) for k in tensors if k.startswith("nsp_")}

out = model.distilbert(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(ATTENTION_MASK))
hidden = out.last_hidden_state
mlm_logits = model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(hidden))))
cls = hidden[:, 0]
nsp_logits = F.linear(F.relu(F.linear(cls, head["nsp_pre_classifier.weight"], head["nsp_pre_classifier.bias"])),
                      head["nsp_classifier.weight"], head["nsp_classifier.bias"])
mlm = F.cross_entropy(mlm_logits[:, 1:].reshape(-1, mlm_logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
nsp = F.cross_entropy(nsp_logits, labels[:, 0], ignore_index=-100)
(mlm + nsp).backward()
grads = {n: p.grad.reshape(-1).tolist() for n, p in model.named_parameters() if p.grad is not None}
grads.update({n: p.grad.reshape(-1).tolist() for n, p in head.items()})
print(json.dumps({"loss": (mlm + nsp).item(), "mlm_loss": mlm.item(), "grads": grads}))
