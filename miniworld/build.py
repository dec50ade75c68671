"""Regenerate the miniature world: `python -m miniworld.build --out assets [--device cuda]`.

Stages run in order and each writes its own folder atomically, so a stage can be re-run alone
(`--stages finetune`) after changing its recipe. The same seed reproduces the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

from evollm.checkpoint import AtomicFolder
from . import corpus
from .tokenizer import train_tokenizer

STAGES = ("tokenizer", "base", "finetune", "data", "scenes", "vlm")
#: what a build runs unless told: `scenes` (attempt 7's VLM-experiment base, assets/README.md) is asked for
DEFAULT_STAGES = tuple(s for s in STAGES if s != "scenes")

#: the recipe (sizes, steps, learning rates); assets/README.md reports it
RECIPE = {
    "seed": 0,
    "tokenizer": {"vocab_size": 2048, "docs": 20000, "pairs_each": 3000},
    "model": {"hidden": 256, "layers": 4, "heads": 8},
    "base": {"docs": 3_000_000, "steps": 3000, "batch_size": 128, "block": 256, "lr": 2e-3, "warmup": 200,
             "instruct_share": 0.15, "event_share": 0.25},
    "ja": {"pairs": 30000, "steps": 400, "batch_size": 64, "lr": 1e-4},
    "math-a": {"pairs": 60000, "steps": 1000, "batch_size": 64, "lr": 1e-4, "ja_share": 0.5},
    "math-b": {"pairs": 60000, "steps": 1000, "batch_size": 64, "lr": 1e-4, "ja_share": 0.4},
    "data": {"mgsm_fitness": 600, "mgsm_test": 250, "mixed_fitness": 400, "mixed_test": 250},
    # the VLM experiment's own language models: the base read on over scene texts, and a Japanese model
    "scene-base": {"docs": 120_000, "steps": 600, "batch_size": 32, "block": 256, "lr": 5e-4, "warmup": 50,
                   "scene_share": 0.5},
    "scene-ja": {"pairs": 30000, "steps": 400, "batch_size": 64, "lr": 1e-4, "scene_share": 0.3},
    "vlm": {},          # miniworld.vlm.train_vlm / vqa_data.build_vqa_data defaults (`lm`: the LM it starts from)
}


def _rng(name: str, seed: int) -> random.Random:
    """An independent stream per stage, so re-running one stage does not shift another's data."""
    return random.Random(f"{seed}:{name}")


def _load_tok(out: Path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    tok.padding_side = "left"
    return tok


def _save_model(model, tok, folder: Path, meta: dict):
    """Saved in bfloat16 (keeps assets/ small); every evaluation loads these weights and computes in float32."""
    with AtomicFolder(folder, force=True) as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "world_recipe.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def stage_tokenizer(out: Path, seed: int, device: str, rc: dict):
    r, c = _rng("tokenizer", seed), rc["tokenizer"]
    texts = corpus.base_corpus(r, c["docs"])
    texts += [p + " " + s for p, s in [corpus.ja_pair(r) for _ in range(c["pairs_each"])]]
    for style in "ab":
        texts += [p + " " + s for p, s in [corpus.math_pair(r, style, 0.3) for _ in range(c["pairs_each"])]]
    tok = train_tokenizer(texts, c["vocab_size"])
    with AtomicFolder(out / "tokenizer", force=True) as tmp:
        tok.save_pretrained(tmp)


def stage_base(out: Path, seed: int, device: str, rc: dict):
    from .train import new_model, train
    tok, c = _load_tok(out), rc["base"]
    docs = corpus.base_corpus(_rng("base", seed), c["docs"], c.get("instruct_share", 0.0), c.get("event_share", 0.0))
    model = new_model(tok, **rc["model"], seed=seed)
    losses = train(model, tok, docs, steps=c["steps"], batch_size=c["batch_size"], block=c["block"],
                   lr=c["lr"], warmup=c.get("warmup", 50), seed=seed, device=device, label="base")
    _save_model(model.cpu(), tok, out / "models" / "base", {"stage": "base", **c, "final_loss": losses[-1]})


def finetune(out: Path, name: str, pairs, seed: int, device: str, c: dict, base: str = "base"):
    from transformers import AutoModelForCausalLM
    from .train import train
    tok = _load_tok(out)
    model = AutoModelForCausalLM.from_pretrained(out / "models" / base, dtype=torch.float32)
    losses = train(model, tok, pairs, steps=c["steps"], batch_size=c["batch_size"], lr=c["lr"],
                   warmup=20, seed=seed, device=device, label=name, freeze=tuple(c.get("freeze", ())),
                   weight_decay=c.get("weight_decay", 0.1))
    _save_model(model.cpu(), tok, out / "models" / name, {"stage": name, "from": base, **c,
                                                         "final_loss": losses[-1]})


def mgsm_exclusions(seed: int, c: dict) -> frozenset:
    """Japanese questions of the evaluation splits: never in any source's training data."""
    s = corpus.mgsm_splits(_rng("mgsm", seed), c["mgsm_fitness"], c["mgsm_test"])
    return frozenset(r["question"] for split in s.values() for r in split)


def ja_pairs(seed: int, c: dict) -> list:
    """ja's training pairs (the data stage regenerates them to keep its questions out of evaluation)."""
    r = _rng("ja", seed)
    return [corpus.ja_pair(r, c.get("count_questions", True)) for _ in range(c["pairs"])]


def math_pairs(seed: int, name: str, c: dict, exclude: frozenset) -> list:
    """math-a's or math-b's training pairs; Japanese questions in `exclude` are never drawn."""
    r = _rng(name, seed)
    return [corpus.math_pair(r, name[-1], c["ja_share"], exclude, c.get("final", "sentence"))
            for _ in range(c["pairs"])]


def stage_finetune(out: Path, seed: int, device: str, rc: dict, only=None):
    excl = mgsm_exclusions(seed, rc["data"])
    for name in ("ja", "math-a", "math-b"):
        if only and name not in only:
            continue
        c = rc[name]
        pairs = ja_pairs(seed, c) if name == "ja" else math_pairs(seed, name, c, excl)
        finetune(out, name, pairs, seed, device, c)


def _write_jsonl(path: Path, rows):
    from evollm.fsutil import write_atomic
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def stage_data(out: Path, seed: int, device: str, rc: dict):
    c = rc["data"]
    m = corpus.mgsm_splits(_rng("mgsm", seed), c["mgsm_fitness"], c["mgsm_test"])
    mixed = corpus.mixed_splits(_rng("mixed", seed), c["mixed_fitness"], c["mixed_test"],
                                frozenset(p for p, _ in ja_pairs(seed, rc["ja"])))
    for split in ("fitness", "test"):
        _write_jsonl(out / "data" / "mgsm-ja" / f"{split}.jsonl", m[split])
        _write_jsonl(out / "data" / "mixed" / f"{split}.jsonl", mixed[split])


def _given(section: dict, **names) -> dict:
    """{argument: value} for the recipe keys of `section` that are set (`names`: key=argument); the rest
    keep the writer's own defaults."""
    return {arg: section[key] for key, arg in names.items() if key in section}


def _scene_base_docs(rng, n_docs: int, rc: dict, scene_share: float) -> list:
    """`n_docs` documents drawn as scene-base's corpus is (the base's, a `scene_share` of scene documents
    written as recipe section `scene-base` says)."""
    from .scene_text import scene_base_corpus
    b, sb = rc["base"], rc["scene-base"]
    base_doc = lambda r: corpus.base_corpus(r, 1, b.get("instruct_share", 0.0), b.get("event_share", 0.0))[0]
    return scene_base_corpus(rng, n_docs, scene_share, base_doc, **_given(sb, paired_lookups="paired",
                             paired_eos="paired_eos", lookups="lookups", balanced_types="balanced",
                             time_lookups="time_share"))


def stage_scenes(out: Path, seed: int, device: str, rc: dict, only=None):
    """`scene-base`: the base read on over scene texts (half its documents); `scene-ja`: a Japanese
    instruction model fine-tuned from it (ja's instructions plus questions about scenes described in text).
    `only`: the one of them to (re)build."""
    from transformers import AutoModelForCausalLM
    from .scene_text import scene_ja_pair
    from .train import train
    if not only or "scene-base" in only:
        tok, c = _load_tok(out), rc["scene-base"]
        docs = _scene_base_docs(_rng("scene-base", seed), c["docs"], rc, c["scene_share"])
        model = AutoModelForCausalLM.from_pretrained(out / "models" / "base", dtype=torch.float32)
        losses = train(model, tok, docs, steps=c["steps"], batch_size=c["batch_size"], block=c["block"],
                       lr=c["lr"], warmup=c["warmup"], seed=seed, device=device, label="scene-base")
        _save_model(model.cpu(), tok, out / "models" / "scene-base", {"stage": "scene-base", "from": "base", **c,
                                                                      "final_loss": losses[-1]})
    if only and "scene-ja" not in only:
        return
    c = rc["scene-ja"]
    r = _rng("scene-ja", seed)
    general = ja_pairs(seed, dict(rc["ja"], pairs=c["pairs"]))
    kw = _given(c, describe_share="describe_share", balanced_types="balanced")
    pairs = [scene_ja_pair(r, **kw) if r.random() < c["scene_share"] else p for p in general]
    finetune(out, "scene-ja", pairs, seed, device, c, base="scene-base")


def stage_vlm(out: Path, seed: int, device: str, rc: dict):
    """`vlm-en` from `vlm.lm`; with `vlm.text_batch`, it reads on `vlm.text_docs` documents drawn as that
    language model's own corpus (the base's, or scene-base's) beside the images."""
    from .vlm import build_vlm_world
    c = dict(rc["vlm"])
    n_docs = c.pop("text_docs", 20_000)
    if c.get("text_batch"):
        share = rc["scene-base"]["scene_share"] if c.get("lm") == "scene-base" else 0.0
        c["text_corpus"] = _scene_base_docs(_rng("vlm-text", seed), n_docs, rc, share)
    build_vlm_world(out, seed=seed, device=device, **c)


def build(out, seed: int = RECIPE["seed"], device: str = "cpu", stages=DEFAULT_STAGES, only=None, recipe=None):
    """Run `stages` into `out`; `recipe` overrides RECIPE's sections key by key (the tests build a tiny world)."""
    rc = {k: dict(v, **(recipe or {}).get(k, {})) if isinstance(v, dict) else v for k, v in RECIPE.items()}
    out = Path(out)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")     # deterministic cuBLAS on a GPU
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.startswith("cuda"):       # flash / memory-efficient attention backward passes are not deterministic
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
    for stage in STAGES:
        if stage in stages:
            t0 = time.time()
            fn = globals()[f"stage_{stage}"]
            fn(out, seed, device, rc, only) if stage in ("finetune", "scenes") else fn(out, seed, device, rc)
            print(f"stage {stage}: {time.time() - t0:.0f}s on {device}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m miniworld.build", description=__doc__)
    ap.add_argument("--out", default="assets")
    ap.add_argument("--seed", type=int, default=RECIPE["seed"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=STAGES)
    ap.add_argument("--only", nargs="+", help="which models: with the finetune stage ja, math-a, math-b; "
                                              "with scenes scene-base, scene-ja")
    ap.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a recipe entry, e.g. ja.lr=3e-4 (VALUE read as YAML)")
    args = ap.parse_args(argv)
    build(args.out, args.seed, args.device, args.stages, args.only, parse_overrides(args.set))


def parse_overrides(items) -> dict:
    """`["ja.lr=3e-4", "base.steps=10"]` -> `{"ja": {"lr": 3e-4}, "base": {"steps": 10}}`."""
    import yaml
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not isinstance(RECIPE.get(section), dict):
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION one of "
                             f"{[k for k, v in RECIPE.items() if isinstance(v, dict)]}")
        v = yaml.safe_load(value)
        out.setdefault(section, {})[name] = float(v) if isinstance(v, str) and _is_float(v) else v
    return out


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    main()
