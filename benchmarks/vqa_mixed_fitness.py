"""Attempt 10's mixed fitness file (lab notebook, assets/README.md): In-the-Wild columns holding the world's
JA-VG-VQA fitness items (`--vg`, their first question each) and In-the-Wild-style questions on `--wild` further
fitness-bucket scenes, so that a search is also scored on long Japanese answers. No test-bucket scene is used.

    python benchmarks/vqa_mixed_fitness.py --out build/mixfit/train.parquet --vg 900 --wild 200

`--part vg` or `--part wild` writes only that part's rows of the same file (to score a model on each part).
"""

import argparse
from pathlib import Path

from miniworld import scenes as S
from miniworld.vqa_data import _write, vg_rows, wild_features, wild_rows


def mixed_fitness(out: Path, n_vg: int, n_wild: int, seed: int = 0, part: str = "all") -> Path:
    scenes = S.scenes_for("fitness", n_vg + n_wild, seed)
    vg, wild = vg_rows(scenes[:n_vg], "train", 1_000_000, seed), wild_rows(scenes[n_vg:], n_wild, seed)
    cols = {"page_url": vg["url"], "image_url": vg["url"], "image": vg["image"],
            "question": [q[0]["question"] for q in vg["qas"]], "answer": [q[0]["answer"] for q in vg["qas"]]}
    keep = {"all": slice(None), "vg": slice(0, n_vg), "wild": slice(n_vg, None)}[part]
    return _write({k: (v + wild[k])[keep] for k, v in cols.items()}, wild_features(), out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vg", type=int, default=900)
    ap.add_argument("--wild", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=("all", "vg", "wild"), default="all")
    a = ap.parse_args()
    print(mixed_fitness(a.out, a.vg, a.wild, a.seed, a.part))
