#!/usr/bin/env bash
# The paper's two LLM columns on the miniature world: MGSM-ja accuracy (the world's held-out Japanese math,
# official protocol, 48 new tokens) and the general-ability stand-in (world_jcqa through lm-eval, 0-shot),
# for the sources and the evolved recipe assets/recipes/mgsm-ja-searched.yaml exported with `evollm merge --recipe`.
# Writes benchmarks/general_ability_cpu.json; the table is in README ("General ability").
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1
OUT=${OUT:-build/general-ability}
mkdir -p "$OUT"
[ -d "$OUT/evolved" ] || $BIN/evollm merge --recipe assets/recipes/mgsm-ja-searched.yaml --out "$OUT/evolved" --seed 0 --quiet
time $BIN/evollm eval --suite world-general --max-new-tokens 48 --json benchmarks/general_ability_cpu.json \
  --model assets/models/base --model assets/models/ja --model assets/models/math-a --model assets/models/math-b \
  --model "$OUT/evolved"
