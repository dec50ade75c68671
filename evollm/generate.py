"""Batched decoding for fitness and evaluation: left padding, KV cache, stop strings."""

from __future__ import annotations

import torch


def cache_keyword(model) -> str:
    """The keyword (and output field) under which `model` takes and returns its KV cache: `cache` in
    recent transformers 5.x, `past_key_values` in early 5.x (deprecated since)."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def truncate_at(text: str, stops) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def batches(n: int, batch_size: int, progress: bool = False, desc: str = "generating"):
    """Start indices of the batches of n items; with `progress`, a bar over the items on stderr."""
    starts = range(0, n, batch_size)
    if not progress:
        yield from starts
        return
    from tqdm.auto import tqdm
    with tqdm(total=n, unit="item", desc=desc, dynamic_ncols=True) as bar:
        for i in starts:
            yield i
            bar.update(min(batch_size, n - i))


def generate(model, tokenizer, prompts, *, max_new_tokens: int = 128, batch_size: int = 32,
             stops=(), progress: bool = False, **gen_kwargs) -> list[str]:
    """Greedy completions of `prompts` (prompt text excluded), cut at the first stop string.

    Greedy requests on the models `evollm.decode` knows (Llama/Mistral-style causal LMs and DFS models
    over them) run through `evollm.decode.greedy`: prompts sorted by length, a shared prompt prefix
    computed once, finished rows dropped and their slots refilled, stop strings checked on the new
    text only; `batch_size` is its number of slots. Anything else (beam search, repetition penalty,
    other models) runs HF `generate` in static batches of `batch_size` with left padding."""
    from . import decode
    if decode.unsupported(model, tokenizer, stops, **gen_kwargs) is None:
        try:
            ids = decode.greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                stops=stops, progress=progress)
        except decode.Unsupported:
            pass
        else:
            return [truncate_at(t, stops) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return generate_static(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           stops=stops, progress=progress, **gen_kwargs)


@torch.no_grad()
def generate_static(model, tokenizer, prompts, *, max_new_tokens: int = 128, batch_size: int = 32,
                    stops=(), progress: bool = False, **gen_kwargs) -> list[str]:
    """`generate` through HF `model.generate` in static batches of `batch_size` (left padding, stop
    strings by HF's StopStringCriteria), each batch running until its longest row stops."""
    device = next(model.parameters()).device
    outs = []
    for i in batches(len(prompts), batch_size, progress):
        enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True, padding_side="left").to(device)
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
        if stops:
            kw.update(stop_strings=list(stops), tokenizer=tokenizer)
        kw.update(gen_kwargs)
        seq = model.generate(**enc, **kw)
        new = seq[:, enc["input_ids"].shape[1]:]
        outs += [truncate_at(t, stops) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outs
