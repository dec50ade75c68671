"""A small causal-LM training loop for the world's models (CPU or GPU), seeded and deterministic.

Plain strings are packed into fixed-length blocks (loss on every token); (prompt, response) pairs
are padded per batch with the loss on the response and its `</s>` only.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch


def new_model(tokenizer, hidden: int = 256, layers: int = 4, heads: int = 8, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 16 * 16,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg)


def pack(tokenizer, docs, block: int, chunk: int = 100_000) -> torch.Tensor:
    """Concatenate `<s> doc </s>` streams and cut into blocks of `block` tokens (numpy, chunked: the
    GPU recipe packs ~10^8 tokens)."""
    parts = []
    for i in range(0, len(docs), chunk):
        for enc in tokenizer(list(docs[i:i + chunk]))["input_ids"]:
            parts.append(np.asarray(enc + [tokenizer.eos_token_id], dtype=np.int32))
    ids = np.concatenate(parts)
    n = len(ids) // block
    return torch.from_numpy(ids[: n * block].astype(np.int64)).view(n, block)


def encode_pairs(tokenizer, pairs, max_len: int):
    """Token ids and loss masks for (prompt, response) pairs; the response ends with `</s>`."""
    p_ids = tokenizer([p for p, _ in pairs])["input_ids"]
    r_ids = tokenizer([" " + r for _, r in pairs], add_special_tokens=False)["input_ids"]
    out = []
    for p, r in zip(p_ids, r_ids):
        ids = (p + r + [tokenizer.eos_token_id])[:max_len]
        out.append((ids, len(p)))
    return out


def _pair_batch(items, pad_id):
    L = max(len(i) for i, _ in items)
    x = torch.full((len(items), L), pad_id)
    y = torch.full((len(items), L), -100)
    for k, (ids, n_prompt) in enumerate(items):
        t = torch.tensor(ids)
        x[k, : len(ids)] = t
        y[k, n_prompt: len(ids)] = t[n_prompt:]
    mask = torch.arange(L) < torch.tensor([len(i) for i, _ in items]).unsqueeze(1)
    return x, y, mask


def train(model, tokenizer, data, *, steps: int, batch_size: int = 32, lr: float = 1e-3, warmup: int = 50,
          block: int = 128, seed: int = 0, device: str = "cpu", log_every: int = 50, label: str = "",
          freeze=(), weight_decay: float = 0.1):
    """Train `model` in place on `data` (list of str, or list of (prompt, response)); returns losses.

    Parameters whose name contains a string of `freeze` keep their values (e.g. a fine-tune that
    leaves the embeddings, norms and output head as the base has them)."""
    torch.manual_seed(seed)
    torch.set_flush_denormal(True)       # tiny values late in training otherwise slow CPU steps many-fold
    rs = np.random.RandomState(seed)
    model.to(device).train()
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    if isinstance(data[0], str):
        blocks = pack(tokenizer, data, block).to(device)
        get = lambda idx: (blocks[idx], blocks[idx], None)
        n = len(blocks)
    else:
        items = encode_pairs(tokenizer, data, max_len=256)
        get = lambda idx: _pair_batch([items[i] for i in idx.tolist()], tokenizer.pad_token_id)
        n = len(items)
    params = [(name, p) for name, p in model.named_parameters() if not any(f in name for f in freeze)]
    for name, p in model.named_parameters():
        p.requires_grad_(not any(f in name for f in freeze))
    decay = [p for _, p in params if p.dim() >= 2]
    other = [p for _, p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    sched = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    losses, t0 = [], time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * max(sched(step), 0.05)
        x, y, mask = get(torch.from_numpy(rs.randint(0, n, size=batch_size)))
        x, y = x.to(device), y.to(device)
        out = model(input_ids=x, attention_mask=None if mask is None else mask.to(device), labels=y)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[{label}] step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.3f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    model.requires_grad_(True).eval()
    return losses
