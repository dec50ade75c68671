"""Measure the world: sources, baselines, untuned merges and a searched merge on the held-out tests.

`python -m miniworld.report --world assets` prints the table that assets/README.md records.
The search (CMA-ES over DARE-TIES weights and densities) is an ordinary run (`evollm.search.run`, in a
temporary folder) and reads the fitness split only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from evollm.engine.memory import InMemoryMerger
from evollm.search.workbench import untuned
from evollm.tasks import mgsm

SOURCES = ("ja", "math-a", "math-b")


def load_world(world: Path, device="cpu"):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(world / "models" / "base")
    tok.padding_side = "left"
    sd = {n: load_file(str(world / "models" / n / "model.safetensors")) for n in ("base", *SOURCES)}
    model = AutoModelForCausalLM.from_pretrained(world / "models" / "base", dtype=torch.float32).to(device).eval()
    return tok, sd, model


def task_vector_stats(sd: dict, names=SOURCES) -> dict:
    """Relative norm ||source - base|| / ||base|| per source and pairwise cosines of the task vectors:
    merging adds task vectors, which works when they are small and not alike."""
    flat = lambda s: torch.cat([s[k].float().flatten() for k in sorted(sd["base"])])
    base = flat(sd["base"])
    tv = {n: flat(sd[n]) - base for n in names}
    out = {f"norm {n}": round(float(tv[n].norm() / base.norm()), 4) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[f"cos {a}/{b}"] = round(float(torch.nn.functional.cosine_similarity(tv[a], tv[b], dim=0)), 3)
    return out


def recorded_recipes(world: Path, target: str) -> dict:
    """Merges recorded in `world/recipes/<target>-*.yaml` (recipes `evollm merge` exports), as
    label -> (method, global parameters, per-source parameters keyed by source name)."""
    from evollm.recipe import load_recipe
    out = {}
    for path in sorted((world / "recipes").glob(f"{target}-*.yaml")):
        r = load_recipe(path)
        per = {Path(s.model).name: s.parameters for s in r.models or [] if s.model != r.base_model}
        unknown = sorted(set(per) - set(SOURCES))
        if unknown or not per:
            raise ValueError(f"{path}: a `models:` recipe over {SOURCES} expected (got {sorted(per)})")
        out[f"recorded: {path.stem}"] = (r.merge_method, r.parameters, per)
    return out


def read_rows(path: Path):
    return list(mgsm.load_mgsm(str(path)))


def evaluate(model, tok, rows):
    r = mgsm.evaluate(model, tok, rows, max_new_tokens=64, batch_size=128)
    return {k: round(v, 1) for k, v in r.items() if k != "items"}, r["items"]


def run(world: Path, target: str = "mgsm-ja", budget: int = 60, fitness_items: int = 200, seed: int = 0,
        device: str = "cpu", layer_groups: int = 1, weight_max: float = 1.0, log=lambda *a: print(*a, flush=True)) -> dict:
    """Evaluate sources, baselines, untuned merges and a CMA-ES-searched DARE-TIES on `target`'s test split."""
    tok, sd, model = load_world(world, device)
    fit = read_rows(world / "data" / target / "fitness.jsonl")
    test = read_rows(world / "data" / target / "test.jsonl")
    res = {"target": target, "rows": {}, "baselines": mgsm.answer_baselines(fit, test), "examples": {},
           "task_vectors": task_vector_stats(sd)}
    log(f"task vectors: {res['task_vectors']}")

    def record(label, model):
        res["rows"][label], items = evaluate(model, tok, test)
        res["examples"][label] = [i["output"] for i in items[:3]]
        log(f"{label:<28}{res['rows'][label]}")

    for name in ("base", *SOURCES):
        model.load_state_dict(sd[name])
        record(name, model)
    merger = InMemoryMerger(model, sd["base"], {n: sd[n] for n in SOURCES}, device)
    for label, (method, g, per) in untuned(SOURCES).items():
        record(label, merger.merge(method, g, per, seed=seed))
    for label, (method, g, per) in recorded_recipes(world, target).items():
        record(label, merger.merge(method, g, per, seed=seed))

    t0 = time.time()
    acc, per = searched(world, [f"models/{n}" for n in SOURCES], "ja-math", {
        "fitness": {"data": str(world / "data" / target / "fitness.jsonl"), "limit": fitness_items},
        "test": {"data": str(world / "data" / target / "test.jsonl")},
        "protocol": "improved", "max_new_tokens": 64, "batch_size": 128},
        budget=budget, seed=seed, device=device, layer_groups=layer_groups, weight_max=weight_max, log=log)
    res["search"] = {"method": "dare_ties", "normalize": False, "models": per, "fitness_accuracy": acc,
                     "layer_groups": layer_groups, "weight_max": weight_max, "budget": budget,
                     "fitness_items": min(fitness_items, len(fit)), "seconds": round(time.time() - t0)}
    record("searched DARE-TIES", merger.merge("dare_ties", {"normalize": False}, per, seed=seed))
    return res


def searched(world: Path, sources, task: str, task_cfg: dict, *, budget, seed=0, device="cpu", layer_groups=1,
             weight_max=1.0, popsize=8, base="models/base", log=print):
    """A CMA-ES search over DARE-TIES (normalize off) weight in [0, weight_max] and density in [0.05, 1]
    per source (and per layer group), run as any run is (`evollm.search.run`, in a temporary run
    folder: the same loop, the same pinned DARE masks as the export). Returns (best fitness, its
    per-source parameters keyed by source name)."""
    import tempfile

    from evollm.search.config import parse_config
    from evollm.search.run import run as run_search
    cfg = parse_config({
        "name": f"world-{task}", "seed": seed, "device": device, "base_model": str(world / base),
        "models": [str(world / s) for s in sources], "out_dtype": "float32",
        "search": {"method": "dare_ties", "fixed": {"normalize": False}, "layer_groups": layer_groups,
                   "params": {"weight": {"low": 0.0, "high": weight_max, "init": weight_max / 2},
                              "density": {"low": 0.05, "high": 1.0, "init": 0.525}},
                   "sigma": 1 / 6, "popsize": popsize, "budget": budget},
        "task": {"name": task, **task_cfg}, "report": {"sources": False, "baselines": False}}, "world report")
    with tempfile.TemporaryDirectory() as tmp:
        data = run_search(cfg, Path(tmp) / "run", progress=False, log=log)
    return data["best"]["score"], data["best"]["parameters"]


#: the VLM experiment's base LM and Japanese model (attempt 7's world: scene-base scene-ja, `--lms`)
VQA_LMS = ("base", "ja")


def _vqa_merger(world: Path, device: str, vlm_dir=None, lms=VQA_LMS):
    """(vlm, processor, merger): an in-memory merger over the VLM's language tower, the VLM experiment's
    base and Japanese model (`lms`, folders under `world/models`)."""
    from safetensors.torch import load_file
    from evovlm.model import LanguageTower
    from evovlm.infer import load_vlm
    vlm, proc = load_vlm(vlm_dir or world / "models" / "vlm-en", device)
    tower = LanguageTower(vlm)
    base, ja = (load_file(str(world / "models" / n / "model.safetensors")) for n in lms)
    vlm_lm = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    return vlm, proc, InMemoryMerger(tower, base, {"vlm-en": vlm_lm, lms[1]: ja}, device)


#: (ja weight, math-a weight) points of `mgsm_grid`
MGSM_GRID = tuple((wj, wm) for wj in (0.7, 0.85, 1.0) for wm in (0.4, 0.6, 0.8))


def mgsm_grid(world: Path, items: int = 150, seed: int = 1, device: str = "cpu", points=MGSM_GRID,
              log=lambda *a: print(*a, flush=True)) -> dict:
    """Task arithmetic over (ja, math-a) at `points` (math-b 0) on a seeded subset of `items` Japanese
    math fitness rows, beside the task vectors and the untuned merges: the fine-tune probe of
    assets/README.md's lab notebook (attempt 6). Rates as `evaluate` (x100), 48 new tokens."""
    tok, sd, model = load_world(world, device)
    fit = read_rows(world / "data" / "mgsm-ja" / "fitness.jsonl")
    sub = [fit[i] for i in sorted(np.random.RandomState(seed).choice(len(fit), items, replace=False))]
    score = lambda m: {k: round(v, 1) for k, v in mgsm.evaluate(m, tok, sub, max_new_tokens=48, batch_size=256).items()
                       if k not in ("items", "protocol")}
    out = {"task_vectors": task_vector_stats(sd), "untuned": {}, "grid": {}}
    merger = InMemoryMerger(model, sd["base"], {n: sd[n] for n in SOURCES}, device)
    for label, (method, g, per) in untuned(SOURCES).items():
        out["untuned"][label] = score(merger.merge(method, g, per, seed=0))["accuracy"]
    for wj, wm in points:
        r = score(merger.merge("task_arithmetic", {}, {"ja": {"weight": wj}, "math-a": {"weight": wm},
                                                        "math-b": {"weight": 0.0}}))
        out["grid"][f"{wj}/{wm}"] = r
        log(f"ja {wj} math-a {wm}: {r}")
    return out


#: (vlm-en weight, ja weight) points of `vqa_grid`
VQA_GRID = ((1, 0), (0, 1), (1, 1), (1, 0.7), (0.7, 1), (0.5, 1), (0.5, 0.7))


def vqa_grid(world: Path, vlm_dir=None, items: int = 100, device: str = "cpu", points=VQA_GRID, lms=VQA_LMS,
             splits=("fit", "test"), log=lambda *a: print(*a, flush=True)) -> dict:
    """Task arithmetic over (vlm-en's tower, ja) at `points`, on the first `items` rows of `splits` (fitness,
    test): the probe of assets/README.md's lab notebook (`vlm_dir`: another VLM built from this base). A point
    is (vlm-en weight, ja weight) or (..., True): every question asked about another item's image."""
    from evovlm.data import load_ja_vg_vqa
    from .vlm import evaluate_vqa
    vlm, proc, merger = _vqa_merger(world, device, vlm_dir, lms)
    d = world / "data" / "ja-vg-vqa-500"
    files = {"fit": "train", "test": "test"}
    sets = {s: load_ja_vg_vqa(str(d / f"{files[s]}.parquet")).select(range(items)) for s in splits}
    out = {}
    for wv, wj, *shuffled in points:
        shuffled = bool(shuffled and shuffled[0])
        merger.merge("task_arithmetic", {}, {"vlm-en": {"weight": wv}, lms[1]: {"weight": wj}})
        r = {s: evaluate_vqa(vlm, proc, ds, max_new_tokens=24, shuffle_images=shuffled) for s, ds in sets.items()}
        key = f"{wv}/{wj}" + (" images shuffled" if shuffled else "")
        out[key] = {s: round(x["rouge_l"], 1) for s, x in r.items()}
        last = r[splits[-1]]
        out[key][f"{splits[-1]}_predictions"] = last["predictions"]
        log(f"vlm-en {wv} {lms[1]} {wj}{' images shuffled' if shuffled else ''}: "
            + " ".join(f"{s} {out[key][s]:5.1f}" for s in splits)
            + f"  {list(zip(last['references'][:4], last['predictions'][:4]))}")
    return out


def run_vqa(world: Path, budget: int = 32, fitness_items: int = 100, seed: int = 0, device: str = "cpu",
            weight_max: float = 1.0, recipe=None, lms=VQA_LMS, exported=None,
            log=lambda *a: print(*a, flush=True)) -> dict:
    """JA-VG-VQA (world) test and In-the-Wild (world): vlm-en, the base and the Japanese model as its language
    tower, untuned merges, and a searched merge (a search here, the DARE-TIES `recipe` file an `evovlm
    merge` run found, or `exported`: the VLM folder it wrote, scored as it is: a recipe's DARE masks are
    drawn again), also with the test images shuffled (each question asked about another item's image: a
    model that looks must lose)."""
    from evovlm.data import load_in_the_wild, load_ja_vg_vqa
    from .vlm import evaluate_vqa
    vlm, proc, merger = _vqa_merger(world, device, lms=lms)
    base_name, ja_name = lms
    data = world / "data"
    fit = load_ja_vg_vqa(str(data / "ja-vg-vqa-500" / "train.parquet"))
    tests = {"JA-VG-VQA (world) test": load_ja_vg_vqa(str(data / "ja-vg-vqa-500" / "test.parquet")),
             "In-the-Wild (world)": load_in_the_wild(str(data / "ja-vlm-bench-in-the-wild" / "test.parquet"))}
    res = {"rows": {}, "examples": {}}

    def record(label, shuffle=False, model=None):
        res["rows"][label] = {}
        for tname, ds in tests.items():
            r = evaluate_vqa(vlm if model is None else model, proc, ds, seed=seed, shuffle_images=shuffle)
            res["rows"][label][tname] = round(r["rouge_l"], 1)
            res["examples"].setdefault(label, list(zip(r["questions"][:2], r["predictions"][:2])))
        log(f"{label:<28}{res['rows'][label]}")

    record("vlm-en")
    # baselines: the most common fitness answer for every question; the VLM with ja's language tower
    # (task vectors: vlm-en 0, ja 1), which answers in Japanese without the VLM's training
    from collections import Counter
    from evovlm.data import qa_items
    from evollm.protocols import ja_vqa
    const = Counter(x["answer"] for x in qa_items(fit)).most_common(1)[0][0]
    res["rows"][f"constant answer ({const})"] = {
        t: round(ja_vqa.score([const] * len(ds), [x["answer"] for x in qa_items(ds)], seed)["rougeL_ja"], 1)
        for t, ds in tests.items()}
    res["constant_answer"] = const
    log(f"{'constant answer':<28}{res['rows'][f'constant answer ({const})']}")
    merger.merge("task_arithmetic", {}, {"vlm-en": {"weight": 0.0}, ja_name: {"weight": 0.0}})
    record(f"{base_name} as the language tower")
    merger.merge("task_arithmetic", {}, {"vlm-en": {"weight": 0.0}, ja_name: {"weight": 1.0}})
    record(f"{ja_name} as the language tower")
    for label, (method, g, per) in untuned(("vlm-en", ja_name)).items():
        merger.merge(method, g, per, seed=seed)
        record(label)

    if exported is not None:
        from evovlm.infer import load_vlm
        model = load_vlm(exported, device)[0]
        res["exported"] = Path(exported).name
        record("evolved (the exported VLM)", model=model)
        record("evolved (the exported VLM), images shuffled", shuffle=True, model=model)
        return res
    if recipe is not None:
        from evollm.recipe import load_recipe
        r = load_recipe(recipe)
        if r.merge_method != "dare_ties" or not r.models:
            raise ValueError(f"{recipe}: expected a dare_ties recipe over vlm-en and {ja_name}")
        per = {Path(m.model).name: m.parameters for m in r.models}
        res["recipe"] = {"file": Path(recipe).name, "models": per}
        label = "evolved (the recipe)"
    else:
        t0 = time.time()
        score, per = searched(world, ["models/vlm-en", f"models/{ja_name}"], "ja-vqa", {
            "fitness": {"data": str(data / "ja-vg-vqa-500" / "train.parquet"), "limit": fitness_items},
            "test": {"data": str(data / "ja-vg-vqa-500" / "test.parquet")}, "protocol": "world"},
            budget=budget, seed=seed, device=device, weight_max=weight_max, base=f"models/{base_name}", log=log)
        res["search"] = {"method": "dare_ties", "normalize": False, "models": per,
                         "fitness_rouge_l": round(score, 1), "weight_max": weight_max, "budget": budget,
                         "fitness_items": min(fitness_items, len(fit)), "seconds": round(time.time() - t0)}
        label = "searched DARE-TIES"
    merger.merge("dare_ties", {"normalize": False}, per, seed=seed)
    record(label)
    record(f"{label}, images shuffled", shuffle=True)
    return res


def table(res) -> str:
    b = res["baselines"]
    lines = [f"held-out {res['target']} test ({'accuracy = number right AND answer in the required language'})",
             f"{'model':<28}{'accuracy':>9}{'number ok':>11}{'language ok':>13}"]
    for label, r in res["rows"].items():
        lines.append(f"{label:<28}{r['accuracy']:>9.1f}{r['number_correct']:>11.1f}{r['lang_rate']:>13.1f}")
    lines.append(f"{'constant answer (' + str(b['constant_answer']) + ')':<28}{b['constant']:>9.1f}")
    lines.append(f"{'chance':<28}{b['chance']:>9.1f}")
    return "\n".join(lines)


def vqa_table(res) -> str:
    """`run_vqa`'s rows as a markdown table (ROUGE-L with the language rule, x100)."""
    sets = list(next(iter(res["rows"].values())))
    lines = ["| model | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for label, r in res["rows"].items():
        lines.append(f"| {label} | " + " | ".join(f"{r[t]:.1f}" for t in sets) + " |")
    return "\n".join(lines)


def quiet_progress():
    """No per-file progress bars from transformers and datasets: the tables are the output."""
    import datasets
    from transformers.utils import logging
    logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv=None):
    quiet_progress()
    ap = argparse.ArgumentParser(prog="python -m miniworld.report")
    ap.add_argument("--world", default="assets")
    ap.add_argument("--target", default="mgsm-ja", choices=["mgsm-ja", "mixed", "vqa", "mgsm-grid", "vqa-grid"],
                    help="a test table with a search, or a task-arithmetic grid probe (*-grid)")
    ap.add_argument("--vlm", help="with --target vqa-grid: a VLM folder other than WORLD/models/vlm-en")
    ap.add_argument("--recipe", help="with --target vqa: score this DARE-TIES recipe (e.g. an evovlm merge run's "
                                     "best/recipe.yaml) instead of searching")
    ap.add_argument("--exported", help="with --target vqa: score this VLM folder (e.g. an evovlm merge run's "
                                       "best/model) as it is, instead of searching")
    ap.add_argument("--lms", nargs=2, default=list(VQA_LMS), metavar=("BASE", "JA"),
                    help="with the vqa targets: the base and the Japanese model under WORLD/models "
                         "(attempt 7's world: scene-base scene-ja)")
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--fitness-items", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weight-max", type=float, default=1.0, help="upper bound of each searched weight")
    ap.add_argument("--layer-groups", type=int, default=1,
                    help="search each weight as a gradient of this many values over the layers")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    if args.recipe and args.exported:
        ap.error("--recipe and --exported both name the evolved VLM: give one")
    world = Path(args.world)
    if args.target == "mgsm-grid":
        res = mgsm_grid(world, device=args.device)
    elif args.target == "vqa-grid":
        res = vqa_grid(world, args.vlm, device=args.device, lms=tuple(args.lms))
    elif args.target == "vqa":
        res = run_vqa(world, args.budget, args.fitness_items, args.seed, args.device, args.weight_max, args.recipe,
                      tuple(args.lms), args.exported)
        print(vqa_table(res))
    else:
        res = run(world, args.target, args.budget, args.fitness_items, args.seed, args.device,
                  args.layer_groups, args.weight_max)
        print(table(res))
    if "search" in res:
        print("searched recipe:", json.dumps(res["search"], ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()
