#!/usr/bin/env bash
# The miniature world's default experiment (`evollm merge`, configs/world-ja-math.yaml), timed end to
# end (loading, search, export, report), recorded as benchmarks/evolve_world_$LABEL.md (+ .png).
# Usage: benchmarks/evolve_world.sh [LABEL] [extra evollm merge args, e.g. --config RUN.yaml]
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-cpu}; shift || true
out=runs/bench-$label-$(date +%Y%m%d-%H%M%S)
start=$(date +%s)
HF_HUB_OFFLINE=1 .venv/bin/evollm merge --out "$out" --quiet "$@"
secs=$(( $(date +%s) - start ))
dest=benchmarks/evolve_world_$label
cp "$out/fitness.png" "$dest.png"
{
  echo "# evollm merge on the miniature world ($label)"
  echo
  echo "Command: \`benchmarks/evolve_world.sh $label${*:+ $*}\` (run folder $out). Wall time end to end: $secs s."
  tail -n +2 "$out/report.md" | sed "s#(fitness.png)#($(basename "$dest").png)#"
} > "$dest.md"
echo "wrote $dest.md ($secs s)"
