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
for f in fitness.png ps/fitness.png; do [ -f "$out/$f" ] && cp "$out/$f" "$dest.png" && break; done
for f in path.png dfs/path.png; do [ -f "$out/$f" ] && cp "$out/$f" "$dest-path.png" && break; done
{
  echo "# $front merge on the miniature world ($label)"
  echo
  echo "Command: \`${FRONT:+FRONT=$front }benchmarks/evolve_world.sh $label${*:+ $*}\` (run folder $out). Wall time end to end: $secs s."
  tail -n +2 "$out/report.md" | sed -e "s#(fitness.png)#($(basename "$dest").png)#" \
    -e "s#(\(dfs/\)\?path.png)#($(basename "$dest")-path.png)#" \
    -e "s#\[ps/report.md\](ps/report.md)#\`ps/report.md\` of the run folder#" \
    -e "s#\[dfs/report.md\](dfs/report.md)#\`dfs/report.md\` (below)#"
  if [ -f "$out/dfs/report.md" ]; then
    echo; echo "## Phase 2 (DFS over the PS-merged model and B) in detail"; echo
    tail -n +2 "$out/dfs/report.md" | sed -e "s#(fitness.png)#($(basename "$dest")-dfs.png)#" \
      -e "s#(path.png)#($(basename "$dest")-path.png)#"
    cp "$out/dfs/fitness.png" "$dest-dfs.png"
  fi
} | sed -e "s#$PWD/##g" > "$dest.md"          # paths as the repo sees them (no machine's absolute path)
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
  } | sed -e "s#$PWD/##g" >> "$dest.md"
fi
echo "wrote $dest.md ($secs s)"
