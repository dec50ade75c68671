#!/usr/bin/env bash
# A miniature-world evolution run, timed end to end (loading, search, export, report), recorded as
# benchmarks/evolve_world_$LABEL.md (+ .png). FRONT=evollm (default: configs/world-ja-math.yaml) or
# FRONT=evovlm (configs/world-vqa.yaml; then `evovlm bench` of the source and evolved VLM is appended).
# Usage: [FRONT=evovlm] benchmarks/evolve_world.sh [LABEL] [extra merge args, e.g. --config RUN.yaml]
set -euo pipefail
cd "$(dirname "$0")/.."
front=${FRONT:-evollm}
label=${1:-cpu}; shift || true
out=runs/bench-$label-$(date +%Y%m%d-%H%M%S)
start=$(date +%s)
HF_HUB_OFFLINE=1 .venv/bin/$front merge --out "$out" --quiet "$@"
secs=$(( $(date +%s) - start ))
dest=benchmarks/evolve_world_$label
cp "$out/fitness.png" "$dest.png"
{
  echo "# $front merge on the miniature world ($label)"
  echo
  echo "Command: \`${FRONT:+FRONT=$front }benchmarks/evolve_world.sh $label${*:+ $*}\` (run folder $out). Wall time end to end: $secs s."
  tail -n +2 "$out/report.md" | sed "s#(fitness.png)#($(basename "$dest").png)#"
} > "$dest.md"
if [ "$front" = evovlm ]; then
  bstart=$(date +%s)
  HF_HUB_OFFLINE=1 .venv/bin/evovlm bench --model assets/models/vlm-en --model "$out/best/model" \
    --json "$out/bench.json" > "$out/bench.txt" 2>/dev/null
  {
    echo
    echo "## \`evovlm bench\` (world-vqa = the held-out JA-VG-VQA test, world-culture = the In-the-Wild copy; 64 new tokens)"
    echo
    echo "Command: \`evovlm bench --model assets/models/vlm-en --model $out/best/model\` ($(( $(date +%s) - bstart )) s)."
    echo
    grep '^|' "$out/bench.txt"
  } >> "$dest.md"
fi
echo "wrote $dest.md ($secs s)"
