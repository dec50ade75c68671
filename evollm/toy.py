"""`make toy`: merge small models built on the spot and show what each merge can do.

From before the miniature world (assets/) existed: the toy builds its own toy situation in a few
seconds on a CPU: a tiny Llama `base` that can shift and rotate 5-symbol strings, and two
fine-tunes of it that each learned a new skill on its own half of the symbols: `copy` (repeat
the string) and `dec` (decrement each symbol). Each merge
method combines the two fine-tunes through `evollm merge`'s own code path (recipe -> merged
checkpoint on disk -> reloaded with transformers), and the table shows the exact-match
accuracy of every model on both skills. Everything is seeded: the same seed prints the same
table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from .engine.disk import run_merge
from .recipe import parse_recipe

BOS, COPY, DEC, SEP, SHIFT, ROTATE = 1, 3, 4, 5, 6, 7
FIRST, N_SYMBOLS, LENGTH = 8, 10, 5
#: each fine-tune's skill lives on its own half of the symbols (like two languages)
DOMAIN = {COPY: (FIRST, FIRST + N_SYMBOLS // 2), DEC: (FIRST + N_SYMBOLS // 2, FIRST + N_SYMBOLS)}


def batch(task: int, n: int, g: torch.Generator):
    """[BOS, task, x1..x5, SEP, y1..y5] for n random x."""
    lo, hi = DOMAIN.get(task, (FIRST, FIRST + N_SYMBOLS))
    x = torch.randint(lo, hi, (n, LENGTH), generator=g)
    y = {COPY: x, DEC: (x - FIRST - 1) % N_SYMBOLS + FIRST,
         SHIFT: (x - FIRST + 1) % N_SYMBOLS + FIRST, ROTATE: x.roll(1, 1)}[task]
    head = torch.tensor([BOS, task]).expand(n, 2)
    return torch.cat([head, x, torch.full((n, 1), SEP), y], 1)


def train(model, tasks, steps: int, seed: int, lr: float):
    """AdamW on the answer tokens only, cycling through ``tasks``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        seq = batch(tasks[step % len(tasks)], 128, g)
        labels = seq.clone()
        labels[:, : 3 + LENGTH] = -100
        loss = model(input_ids=seq, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, task: int, n: int = 300, seed: int = 12345) -> float:
    """Exact match of all answer symbols, greedy, on n held-out prompts."""
    seq = batch(task, n, torch.Generator().manual_seed(seed))
    ids = seq[:, : 3 + LENGTH]
    for _ in range(LENGTH):
        nxt = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return (ids[:, -LENGTH:] == seq[:, -LENGTH:]).all(1).float().mean().item()


def build_models(root: Path, seed: int) -> dict:
    """base (knows shift and rotate) and its fine-tunes copy and dec (decrement)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=FIRST + N_SYMBOLS, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32, tie_word_embeddings=False)
    base = train(LlamaForCausalLM(cfg), [SHIFT, ROTATE], 150, seed, lr=3e-3)
    base.save_pretrained(root / "base")
    paths = {"base": root / "base"}
    for name, task in (("copy", COPY), ("dec", DEC)):
        model = LlamaForCausalLM(cfg)
        model.load_state_dict(base.state_dict())
        train(model, [task], 100, seed + task, lr=1e-3).save_pretrained(root / name)
        paths[name] = root / name
    return paths


def recipes(p: dict) -> dict:
    b, c, r = str(p["base"]), str(p["copy"]), str(p["dec"])
    two = lambda **kw: [{"model": c, "parameters": dict(kw)}, {"model": r, "parameters": dict(kw)}]  # noqa: E731
    return {
        "linear": {"merge_method": "linear", "models": two(weight=1.0)},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": b, "models": two(weight=0.5)},
        "ties": {"merge_method": "ties", "base_model": b, "models": two(weight=1.0, density=0.5)},
        "dare_ties": {"merge_method": "dare_ties", "base_model": b, "models": two(weight=0.5, density=0.5)},
        "della": {"merge_method": "della", "base_model": b, "models": two(weight=1.0, density=0.5)},
        "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": b, "models": two(weight=0.5, density=0.9)},
        "model_stock": {"merge_method": "model_stock", "base_model": b, "models": [{"model": c}, {"model": r}]},
        "slerp t=0.5": {"merge_method": "slerp", "base_model": c, "models": [{"model": c}, {"model": r}],
                        "parameters": {"t": 0.5}},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evollm.toy", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep the models and merges here (default: a temporary folder)")
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        print(f"building base + two fine-tunes (copy, dec) in {root} ...", flush=True)
        paths = build_models(root, args.seed)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = [(name, "source", AutoModelForCausalLM.from_pretrained(p), 0.0) for name, p in paths.items()]
        for name, rec in recipes(paths).items():
            out = root / ("merge-" + name.split()[0])
            summary = run_merge(parse_recipe(rec, origin=f"demo:{name}"), out, seed=args.seed,
                                force=True, progress=False)
            rows.append((name, "merge", AutoModelForCausalLM.from_pretrained(out), summary["seconds"]))
        print()
        print(f"| {'model':<16} | {'kind':<6} | {'copy':>6} | {'dec':>6} | {'mean':>6} | {'merge s':>7} |")
        print(f"|{'-' * 18}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 9}|")
        for name, kind, model, secs in rows:
            a, d = accuracy(model, COPY), accuracy(model, DEC)
            t = f"{secs:7.2f}" if kind == "merge" else f"{'-':>7}"
            print(f"| {name:<16} | {kind:<6} | {a:>6.1%} | {d:>6.1%} | {(a + d) / 2:>6.1%} | {t} |")
        print(f"\nexact match of all {LENGTH} symbols on 300 held-out prompts per skill; "
              f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
