"""Per-candidate in-memory merge time: the one-engine `InMemoryMerger` against the one before it.

    python benchmarks/merge_engine.py [--device cpu|cuda] [--candidates 8] [--threads N] [--out FILE.md]

For each model (the miniature world's base + ja, math-a, math-b from assets/models; a random Llama of
about 100M parameters built here, three "fine-tunes" = base + seeded noise), both mergers hold the same
sources (float32, on the device) and merge the same sequence of random DARE-TIES candidates (weight in
[0, 1], density in [0.1, 1] per source, normalize off: the world's search) into their own copy of the
model, alternating old and new so that both see the same machine load; the table gives the median
seconds per candidate. TIES and task arithmetic rows show the same for the other sparsifications.

Floor: a candidate must at least read the base and three task vectors (or sources) and write the
output, 5 x 4 bytes per parameter, at the bandwidth of a large `copy_` (read + write bytes / time)
measured in the same run. "x floor" is a merge's time over that. (The new merger also reads its held
DARE uniforms, 3 x 4 more bytes per parameter, instead of hashing.)

The old merger (`legacy_memory_merger.py`: the code of commit 7463207, kept importable only here)
re-subtracts the sources, draws DARE masks with torch.Generator and resolves parameters per tensor
per candidate; the new one holds task vectors and their L1 norms, resolves per layer position,
hashes masks (counter-based: the masks differ from the old ones, their statistics do not) and fuses
sparsify/elect/combine chunk by chunk into the live parameters.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from legacy_memory_merger import LegacyInMemoryMerger  # noqa: E402

from evollm.engine.memory import InMemoryMerger  # noqa: E402

SOURCES = ("ja", "math-a", "math-b")


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine(device) -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in open("/proc/meminfo") if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    out = f"{cpu}, {os.cpu_count()} cores{mem}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.device(device).type == "cuda":
        out += f", GPU: {torch.cuda.get_device_name()}"
    return out


def copy_bandwidth(device, numel=1 << 27, reps=5) -> float:
    """Bytes read + written per second by a large tensor copy (512 MiB each way)."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * numel * 4 / best


def world_models(device):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    folder = ROOT / "assets" / "models"
    sd = {n: load_file(str(folder / n / "model.safetensors")) for n in ("base", *SOURCES)}
    make = lambda: AutoModelForCausalLM.from_pretrained(folder / "base", dtype=torch.float32).to(device)  # noqa: E731
    return sd, make


def random_llama(device, layers=8, hidden=768, inter=2048, vocab=32000):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        LlamaForCausalLM(cfg)                     # fail early on a bad config
    base_model = LlamaForCausalLM(cfg)
    base = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    sd = {"base": base}
    g = torch.Generator().manual_seed(1)
    for n in SOURCES:
        sd[n] = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}

    def make():
        m = LlamaForCausalLM(cfg)
        m.load_state_dict(base)
        return m.to(device)
    return sd, make


def candidates(k, seed=0):
    rs = np.random.RandomState(seed)
    return [{n: {"weight": round(float(rs.uniform(0, 1)), 6), "density": round(float(rs.uniform(0.1, 1)), 6)}
             for n in SOURCES} for _ in range(k)]


def bench_model(label, sd, make, device, k, methods, bandwidth, log):
    n_params = sum(v.numel() for v in sd["base"].values())
    t0 = time.perf_counter()
    old = LegacyInMemoryMerger(make(), sd["base"], {n: sd[n] for n in SOURCES}, device)
    sync(device)
    t_old_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = InMemoryMerger(make(), sd["base"], {n: sd[n] for n in SOURCES}, device)
    sync(device)
    t_new_setup = time.perf_counter() - t0
    floor = 5 * 4 * n_params / bandwidth
    rows = []
    for method, glob in methods:
        per = candidates(k + 1)
        times = {"old": [], "new": []}
        for i, p in enumerate(per):
            for name, merger in (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old)):
                sync(device)
                t = time.perf_counter()
                merger.merge(method, glob, p, seed=0)
                sync(device)
                if i:                               # the first candidate warms up (and the new one's L1 norms)
                    times[name].append(time.perf_counter() - t)
        med = {n: statistics.median(v) for n, v in times.items()}
        rows.append((label, n_params, method, med["old"], med["new"], floor))
        log(f"{label} {method}: old {med['old']:.4f} s, new {med['new']:.4f} s, floor {floor:.4f} s "
            f"(spread new {min(times['new']):.4f}-{max(times['new']):.4f})")
    del old, new
    return rows, (t_old_setup, t_new_setup)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--candidates", type=int, default=8, help="timed candidates per method and model")
    ap.add_argument("--models", default="world,llama100m")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    device = args.device
    bandwidth = copy_bandwidth(device)
    log(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")
    methods = [("dare_ties", {"normalize": False}), ("ties", {}), ("task_arithmetic", {})]
    rows, setups = [], {}
    for label in args.models.split(","):
        sd, make = world_models(device) if label == "world" else random_llama(device)
        name = "world (assets/models)" if label == "world" else "random Llama (8 layers, 768 wide, 32k vocab)"
        r, setups[name] = bench_model(name, sd, make, device, args.candidates, methods, bandwidth, log)
        rows += r
        del sd
    lines = [f"Machine: {machine(device)}; device {device}; copy bandwidth {bandwidth / 1e9:.1f} GB/s "
             f"(read + write); median of {args.candidates} candidates after one warm-up, old and new alternating.",
             "",
             "| model | parameters | method (3 sources) | old s/candidate | new s/candidate | speed-up | floor s | "
             "old x floor | new x floor |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for label, n, method, o, nw, fl in rows:
        lines.append(f"| {label} | {n / 1e6:.1f}M | {method} | {o:.4f} | {nw:.4f} | {o / nw:.1f}x | {fl:.4f} | "
                     f"{o / fl:.1f} | {nw / fl:.1f} |")
    lines += ["", "Setup (once per run: holding the inputs; the new merger also subtracts the task vectors): " +
              "; ".join(f"{k}: old {a:.2f} s, new {b:.2f} s" for k, (a, b) in setups.items()) + "."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
