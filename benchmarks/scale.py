"""The paper's scale on one device: 7B-shaped random models (Mistral-7B-v0.1's config) built directly on
the device, and one table with ratios measured in the same run.

Rows: the memory plan under the whole card and under an emulated 80 GB card; the candidate merge
(DARE-TIES, 3 sources) with the sources on the device, against its bandwidth floor (bytes the merge
must move / the copy bandwidth measured here), then (CUDA) again under the emulated card
(`torch.cuda.set_per_process_memory_fraction`) with the sources where its plan puts them (pinned host
memory, streamed per merge); greedy decoding at batch 1, 64 and 256 against its floor (weights + KV
read per step / bandwidth), against today's static-batch path (HF `generate`, batches run to their
longest row) and HF `generate` one prompt at a time; a fitness pass of the paper's shape (1069 prompts
of 150-300 tokens, answer lengths forced from a seeded distribution with median ~200 and a tail to 1024,
since random weights do not stop); the peak device memory of everything run under the emulated card's
cap; the projected wall time of the 1000-candidate PS run. What is projected rather than measured is
marked so.

    python benchmarks/scale.py --shape 7b --device cuda --out benchmarks/scale_h200.md
    python benchmarks/scale.py --shape tiny --device cpu          # the same code at a tiny shape (a test runs it)
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                  rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False)
SHAPES = {
    # model config; fitness workload: prompts, prompt length range, answer median and cap; decode batches
    "7b": dict(config=MISTRAL_7B, prompts=1069, prompt_len=(150, 300), answer_median=200, answer_cap=1024,
               batches=(1, 64, 256), decode_tokens=64, dtype=torch.bfloat16, candidates=1000),
    "tiny": dict(config=dict(MISTRAL_7B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                             sliding_window=None),
                 prompts=24, prompt_len=(15, 30), answer_median=20, answer_cap=100, batches=(1, 8, 16),
                 decode_tokens=8, dtype=torch.float32, candidates=1000),
}
OLD_BATCH = 64          # today's default task.batch_size: static batches of this many prompts


class IdTokenizer:
    """Prompts given as token-id tuples; no EOS (random weights decode until their forced length)."""
    eos_token_id = None
    pad_token_id = 0

    def __call__(self, prompts, **kw):
        return {"input_ids": [list(p) for p in prompts]}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    best = math.inf
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def bandwidth(device, nbytes) -> float:
    """Copy bandwidth (bytes read + written per second) of a device-to-device copy of `nbytes`."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    y = torch.empty_like(x)
    y.copy_(x)
    t, _ = timed(lambda: y.copy_(x), device, repeat=5)
    return 2 * x.numel() * 4 / t


def build(config: dict, dtype, device, seed=0):
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):
        model = MistralForCausalLM(MistralConfig(**config)).to(dtype)
    for p in model.parameters():           # small weights: a stable forward in bfloat16
        p.data.normal_(0.0, 0.02)
    return model.eval()


def workload(shape: dict, seed=0):
    """Prompts (token-id tuples) and forced answer lengths of the fitness pass."""
    rng = np.random.RandomState(seed)
    lo, hi = shape["prompt_len"]
    vocab = shape["config"]["vocab_size"]
    prompts = [tuple(int(t) for t in rng.randint(1, vocab, rng.randint(lo, hi + 1))) for _ in range(shape["prompts"])]
    med, cap = shape["answer_median"], shape["answer_cap"]
    lengths = np.clip(np.round(med * np.exp(rng.normal(0, 0.6, len(prompts)))), 8, cap).astype(int)
    lengths[rng.choice(len(prompts), max(1, len(prompts) // 50), replace=False)] = cap       # the tail
    return prompts, [int(x) for x in lengths]


def hf_static(model, prompts, lengths, batch):
    """Today's path: static batches through HF `generate`, each batch until its longest row."""
    device = next(model.parameters()).device
    tokens = 0
    for i in range(0, len(prompts), batch):
        rows = prompts[i:i + batch]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(rows):
            ids[r, width - len(p):] = torch.tensor(p, device=device)
            mask[r, width - len(p):] = 1
        n = max(lengths[i:i + batch])
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=0, eos_token_id=None)
        tokens += n * len(rows)
    return tokens


def new_path(model, prompts, lengths, batch):
    from evollm.decode import greedy
    out = greedy(model, IdTokenizer(), prompts, max_new_tokens=lengths, batch_size=batch)
    assert [len(o) for o in out] == list(lengths), "forced lengths not met"
    return sum(lengths)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="7b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--emulate", default="80GB", help="the smaller card to emulate (CUDA only)")
    ap.add_argument("--subset", type=int, default=0, help="fitness pass on this many prompts only (0: all); "
                    "the rest is projected")
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    from evollm.engine.memory import InMemoryMerger
    from evollm.fsutil import human, parse_size
    from evollm.memplan import device_budget, kv_bytes_per_token, plan_memory
    from evollm.search.report import machine
    shape, dev = SHAPES[args.shape], args.device
    dtype = shape["dtype"]
    esize = torch.tensor([], dtype=dtype).element_size()
    lines, rows = [], []
    add = lambda *r: rows.append(r)
    t_all = time.time()

    bw = bandwidth(dev, 1 << 30 if dev.startswith("cuda") else 1 << 26)
    add("copy bandwidth (read + write)", f"{bw / 1e9:.0f} GB/s", "", "measured")

    # -- memory plan: the whole device, and the emulated smaller card
    base = build(shape["config"], dtype, dev, seed=0)
    n_params = sum(p.numel() for p in base.parameters())
    largest = max(p.numel() for p in base.parameters())
    kv = kv_bytes_per_token(shape["config"], esize)
    max_tokens = shape["prompt_len"][1] + shape["answer_cap"]
    plans = {}
    budgets = {"whole device": device_budget(dev)}
    if dev.startswith("cuda"):
        budgets[f"emulated {args.emulate}"] = device_budget(dev, parse_size(args.emulate))
    for label, budget in budgets.items():
        p = plan_memory(device=dev, budget=budget, model_bytes=n_params * esize, largest_tensor=largest,
                        n_inputs=4, store_bytes_per_param=esize, model_params=n_params, kv_per_token=kv,
                        max_tokens=max_tokens, batch=256)
        plans[label] = p
        add(f"memory plan, {label}", p.describe(), "", "planned")
    plan = plans["whole device"]

    # -- candidate merge: DARE-TIES over 3 sources (task vectors of small noise), all on the device
    g = torch.Generator(device=dev).manual_seed(1)
    state = {k: v.detach() for k, v in base.state_dict().items()}
    sources = {}
    for s in range(3):
        sources[f"s{s}"] = {k: (v + 0.002 * torch.randn(v.shape, generator=g, device=dev, dtype=torch.float32)
                                .to(dtype)) for k, v in state.items()}
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    merger = InMemoryMerger(base, {k: v.clone() for k, v in state.items()}, sources, dev, store_dtype=dtype)
    per = {n: {"weight": 0.5, "density": 0.5} for n in sources}
    merge_s, _ = timed(lambda: merger.merge("dare_ties", {}, per, seed=0), dev, repeat=2)
    moved = (4 * n_params * esize) + n_params * esize           # read base + 3 inputs, write the candidate
    floor = moved / bw
    add("candidate merge, DARE-TIES, 3 sources on the device", f"{merge_s:.2f} s", f"{merge_s / floor:.1f}x floor "
        f"({human(moved)} / bandwidth = {floor:.2f} s)", "measured")
    if dev.startswith("cuda"):
        add("peak device memory, sources on the device", human(torch.cuda.max_memory_allocated()), "", "measured")

    cuda = dev.startswith("cuda")

    def attempt(label, fn):
        """Run one part of the table; if it fails, its error becomes a row and the rest still runs (the
        script is meant for one scarce run on a GPU)."""
        try:
            return fn()
        except Exception as e:          # noqa: BLE001 -- any failure is reported as a row
            add(label, "FAILED", f"{type(e).__name__}: {str(e)[:300]}", "")
            if cuda:
                torch.cuda.empty_cache()
            return None

    # -- the emulated smaller card: sources in pinned host memory, streamed per merge (the plan's "host")
    del merger                              # the on-device merger (its copy of the base, its sources)
    label = f"emulated {args.emulate}"

    def emulated():
        small, host = plans[label], {}
        for n in list(sources):             # pinned host copies, then the device copies freed
            host[n] = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True).copy_(v) for k, v in sources.pop(n).items()}
        host_base = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True).copy_(v) for k, v in state.items()}
        torch.cuda.empty_cache()
        cap = parse_size(args.emulate)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / torch.cuda.get_device_properties(dev).total_memory))
        torch.cuda.reset_peak_memory_stats()
        m = InMemoryMerger(base, host_base, host, dev, store_dtype=dtype,
                           store_device="cpu" if small.sources_on == "host" else None)
        t, _ = timed(lambda: m.merge("dare_ties", {}, per, seed=0), dev, repeat=2)
        add(f"candidate merge, {label}, sources on {small.sources_on}", f"{t:.2f} s",
            f"{t / floor:.1f}x the on-device floor", "measured")
        return t
    merge_small = attempt(f"candidate merge, {label}", emulated) if cuda else None
    sources.clear()

    try:
        # -- decoding throughput
        weights = n_params * esize
        L, T = shape["prompt_len"][0], shape["decode_tokens"]

        def decode_row(b):
            prompts = [tuple(int(x) for x in np.random.RandomState(i).randint(1, shape["config"]["vocab_size"], L))
                       for i in range(b)]
            lens = [T] * b
            t_new, _ = timed(lambda: new_path(base, prompts, lens, b), dev, repeat=2)     # the first run warms up
            t_old, _ = timed(lambda: hf_static(base, prompts, lens, b), dev, repeat=2)
            step_floor = (weights + b * (L + T / 2) * kv) / bw
            floor_tps = b / step_floor
            new_tps, old_tps = b * T / t_new, b * T / t_old
            cells = [f"{new_tps:,.0f} tok/s", f"{new_tps / floor_tps:.0%} of floor ({floor_tps:,.0f}); "
                     f"{new_tps / old_tps:.2f}x today's static path ({old_tps:,.0f})"]
            if b == 1:
                cells[1] += " (= HF generate one prompt at a time)"
            add(f"decode, batch {b}, {L}-token prompts, {T} new tokens", *cells, "measured")
        for b in shape["batches"]:
            attempt(f"decode, batch {b}", lambda: decode_row(b))

        # -- the fitness pass of the paper's shape
        def fitness_pass():
            prompts, lengths = workload(shape)
            sub = args.subset or len(prompts)
            slots = min(plans.get(label, plan).batch, 256)           # the smaller card's plan on CUDA
            t_new, _ = timed(lambda: new_path(base, prompts[:sub], lengths[:sub], slots), dev)
            old_n = min(len(prompts), 2 * OLD_BATCH) if sub < len(prompts) or args.shape == "7b" else len(prompts)
            t_old, _ = timed(lambda: hf_static(base, prompts[:old_n], lengths[:old_n], OLD_BATCH), dev)
            new_pass = t_new * len(prompts) / sub
            old_pass = t_old * len(prompts) / old_n
            how_new = "measured" if sub == len(prompts) else f"measured on {sub}, projected"
            how_old = "measured" if old_n == len(prompts) else f"measured on {old_n}, projected"
            add(f"fitness pass, {len(prompts)} prompts, answers median {int(np.median(lengths))} max {max(lengths)} "
                f"({sum(lengths):,} tokens)", f"{new_pass:.1f} s (new, {slots} slots)",
                f"{old_pass / new_pass:.1f}x faster than today's ({old_pass:.1f} s, static batches of {OLD_BATCH})",
                f"{how_new}; today: {how_old}")
            return new_pass, old_pass
        passes = attempt("fitness pass", fitness_pass)
        if cuda and merge_small is not None:
            peak = torch.cuda.max_memory_allocated()
            add(f"peak device memory since the {args.emulate} cap (merge, decode rows, fitness pass)", human(peak),
                f"{'within' if peak <= parse_size(args.emulate) else 'OVER'} {args.emulate}; planned "
                f"{human(plans[label].device_bytes)}", "measured")
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
    if passes is None:
        passes = (math.nan, math.nan)
    new_pass, old_pass = passes
    n = shape["candidates"]
    hours = lambda per: n * per / 3600
    add(f"PS run, {n} candidates (merge + fitness pass)", f"{hours(merge_s + new_pass):.1f} h (new, whole device)",
        (f"{hours(merge_small + new_pass):.1f} h with sources on host ({args.emulate}); " if merge_small else "")
        + f"today's path: {hours(merge_s + old_pass):.1f} h", "projected from the rows above")

    head = (f"# The paper's scale ({args.shape} shape) on {dev}\n\nCommand: `python benchmarks/scale.py --shape "
            f"{args.shape} --device {dev}{f' --subset {args.subset}' if args.subset else ''}` "
            f"({time.time() - t_all:.0f} s). Machine: {machine()}"
            + (f"; device: {torch.cuda.get_device_name(dev)}" if dev.startswith("cuda") else "") + ".\n")
    lines = [head, "| measurement | value | against | how |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(str(c) for c in r)} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from evollm.fsutil import write_atomic
        write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
