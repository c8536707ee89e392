"""MultipleNegativesRankingLoss's twin in PyTorch, as sentence-transformers computes it: mean pooling of transformers'
last hidden state over the attention mask, cos_sim(anchors, candidates) * scale, cross-entropy against each anchor's
own positive. Reads the model folder and {ids, mask, anchors, scale}; prints the loss and every gradient as JSON."""
import json
import sys

import torch
import torch.nn.functional as F

from transformers import AutoModel

folder, spec = sys.argv[1], json.loads(sys.argv[2])
torch.use_deterministic_algorithms(True)
model = AutoModel.from_pretrained(folder, dtype=torch.float32).train()
ids, mask = torch.tensor(spec["ids"]), torch.tensor(spec["mask"])
hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
w = mask.unsqueeze(-1).to(hidden.dtype)
pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
n = spec["anchors"]
# sentence_transformers.util.cos_sim: normalize both sides, then a matrix product.
scores = F.normalize(pooled[:n], p=2, dim=1) @ F.normalize(pooled[n:], p=2, dim=1).T * spec["scale"]
loss = F.cross_entropy(scores, torch.arange(n))
loss.backward()
grads = {name: p.grad.reshape(-1).tolist() for name, p in model.named_parameters() if p.grad is not None}
print(json.dumps({"loss": loss.item(), "grads": grads}))
