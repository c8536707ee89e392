"""Shared pieces of the reference scripts: tiny configs of each family and the batches the tests use."""
import json
import os
import sys

import torch

CACHE = os.path.join(os.path.dirname(__file__), "..", ".cache")

VOCAB = 96
PAD = 0

# Three rows of length 7: no padding, right padding and left padding (mask 0 where padded).
INPUT_IDS = [
    [5, 17, 33, 2, 90, 41, 7],
    [11, 3, 64, 29, 8, PAD, PAD],
    [PAD, PAD, PAD, 44, 12, 70, 9],
]
ATTENTION_MASK = [
    [1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 0, 0],
    [0, 0, 0, 1, 1, 1, 1],
]
CLASS_LABELS = [0, 1, 1]


def lm_labels():
    return [[t if m else -100 for t, m in zip(r, mr)] for r, mr in zip(INPUT_IDS, ATTENTION_MASK)]


def configs():
    from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, Qwen2Config

    gpt2 = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    llama = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, rms_norm_eps=1e-6,
                        pad_token_id=PAD, tie_word_embeddings=False)
    llama_tied = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                             pad_token_id=PAD, tie_word_embeddings=True)
    distilbert = DistilBertConfig(vocab_size=VOCAB, max_position_embeddings=32, dim=32, hidden_dim=64, n_layers=2,
                                  n_heads=4, pad_token_id=PAD, dropout=0.0, attention_dropout=0.0,
                                  seq_classif_dropout=0.0)
    bert = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                      max_position_embeddings=32, type_vocab_size=2, pad_token_id=PAD, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    qwen2 = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-6,
                        pad_token_id=PAD, tie_word_embeddings=False)
    qwen2_tied = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                             pad_token_id=PAD, tie_word_embeddings=True)
    return {"gpt2": gpt2, "llama": llama, "llama_tied": llama_tied, "distilbert": distilbert, "bert": bert,
            "qwen2": qwen2, "qwen2_tied": qwen2_tied}


def randomise(model, seed):
    """Re-draw every weight so that norms, biases and embeddings all differ from their defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1.0 + noise if p.dim() == 1 and "weight" in name and "norm" in name.lower() or name.endswith("ln_1.weight")
                    or name.endswith("ln_2.weight") or name.endswith("ln_f.weight") else noise)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def flat(t):
    return t.detach().to(torch.float32).reshape(-1).tolist()


def base_model(folder):
    """The model saved in folder, as the class its config names, in float32."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    return getattr(transformers, config.architectures[0]).from_pretrained(folder, dtype=torch.float32)


def peft_batch(model, rows=(0, 1, 2)):
    """The test batch (those rows) with labels for model's task: class labels, or the ids with padding as -100."""
    ids = torch.tensor([INPUT_IDS[r] for r in rows])
    mask = torch.tensor([ATTENTION_MASK[r] for r in rows])
    if model.config.architectures[0].endswith("ForSequenceClassification"):
        labels = torch.tensor([CLASS_LABELS[r] for r in rows])
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def peft_reference(make_config, grad_key, prepare=None):
    """The command line of every PEFT reference script (peft_lora.py, peft_prompt.py, peft_prefix.py):

      SCRIPT create BASE_DIR OUT_DIR SPEC_JSON   (SPEC: the method's settings, seed, optional rows of the test batch)
          get_peft_model(base, make_config(task, spec, base.config)), then prepare(model) if given, saved to OUT_DIR;
          prints logits, loss, the gradient of every trainable tensor (named by grad_key) with dropout off, and PEFT's
          trainable-parameter count.
      SCRIPT load BASE_DIR ADAPTER_DIR [ROWS_JSON]
          PeftModel.from_pretrained(base, ADAPTER_DIR) and prints its logits and loss on those rows (default: all).
    """
    from peft import PeftModel, TaskType, get_peft_model

    mode, base_dir = sys.argv[1], sys.argv[2]
    base = base_model(base_dir)
    seq_cls = base.config.architectures[0].endswith("ForSequenceClassification")
    task = TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM
    every_row = tuple(range(len(INPUT_IDS)))
    if mode == "create":
        out, spec = sys.argv[3], json.loads(sys.argv[4])
        torch.manual_seed(spec.get("seed", 0))
        model = get_peft_model(base, make_config(task, spec, base.config))
        if prepare:
            prepare(model)
        model.save_pretrained(out)
        model.train()
        for m in model.modules():  # no dropout anywhere, so both sides compute the same thing
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        o = model(**peft_batch(model, spec.get("rows", every_row)))
        o.loss.backward()
        trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
        grads = {grad_key(n): p.grad.reshape(-1).tolist() for n, p in model.named_parameters() if p.requires_grad}
        trainable, _ = model.get_nb_trainable_parameters()
        print(json.dumps({"loss": o.loss.item(), "logits": o.logits.reshape(-1).tolist(), "shape": list(o.logits.shape),
                          "grads": grads, "names": trainable_names, "trainable": trainable}))
    else:
        rows = json.loads(sys.argv[4]) if len(sys.argv) > 4 else every_row
        model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
        with torch.no_grad():
            o = model(**peft_batch(model, rows))
        print(json.dumps({"loss": o.loss.item(), "logits": o.logits.reshape(-1).tolist(), "shape": list(o.logits.shape)}))
