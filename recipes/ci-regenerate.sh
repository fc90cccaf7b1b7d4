#!/usr/bin/env bash
# Regenerate labels in CI (any CI system, or cron): label only what changed since the last run, then
# report the label drift against the previous labels. See docs/ci.md.
#
# Usage: recipes/ci-regenerate.sh IMAGES [pseudo-label options...]
#   e.g. recipes/ci-regenerate.sh data/images --vocab data/classes.txt --clip clip:ViT-B-16/openai --sam sam:vit_b
#
# Environment (all optional):
#   OVLABEL_CI_CACHE   folder to keep between CI runs: model weights, text embeddings, the run directory
#                      (default .ovlabel-ci); restore it before and save it after this script
#   OVLABEL_RUN        the run directory (default $OVLABEL_CI_CACHE/run)
#   OVLABEL_REPORT     where the drift report goes: drift.json, drift.md (default ovlabel-report)
#   OVLABEL_FAIL_ABOVE fail (exit 3) when the drift exceeds this fraction of pixels; unset = report only
#
# Exit status: that of pseudo-label (1 every image failed, 2 bad input or a concurrent run), else that of
# ovlabel diff (3 drift above OVLABEL_FAIL_ABOVE).
set -euo pipefail
images=${1:?usage: $0 IMAGES [pseudo-label options...]}
shift
cache=${OVLABEL_CI_CACHE:-.ovlabel-ci}
run=${OVLABEL_RUN:-$cache/run}
report=${OVLABEL_REPORT:-ovlabel-report}
export HF_HOME=${HF_HOME:-$cache/hf}              # open_clip weights
export TORCH_HOME=${TORCH_HOME:-$cache/torch}     # SAM checkpoints
export OVLABEL_CACHE=${OVLABEL_CACHE:-$cache/ovlabel}  # text embeddings, weight digests
mkdir -p "$report"

# Keep the previous labels to compare with: what `ovlabel diff` reads (run.json, manifest, label maps).
# Hard links cost nothing and stay intact: ovlabel replaces files by renaming, it never edits them.
previous="$cache/previous"
rm -rf "$previous"
if [ -f "$run/run.json" ] && grep -q '"status": "complete"' "$run/run.json"; then
  mkdir -p "$previous"
  for f in run.json manifest.parquet labels; do
    [ -e "$run/$f" ] || continue
    cp -al "$run/$f" "$previous/" 2>/dev/null || cp -a "$run/$f" "$previous/"
  done
fi

# Incremental: only new and changed images are computed; removed ones lose their labels. A run killed
# earlier (cancelled job) is finished here. Changed settings are refused unless --overwrite is passed.
ovlabel pseudo-label "$images" --out "$run" --no-progress "$@" | tee "$report/pseudo-label.txt"

if [ -d "$previous" ]; then
  status=0
  ovlabel diff "$previous" "$run" --json "$report/drift.json" --markdown "$report/drift.md" \
    ${OVLABEL_FAIL_ABOVE:+--fail-above "$OVLABEL_FAIL_ABOVE"} | tee "$report/drift.txt" || status=${PIPESTATUS[0]}
  exit "$status"
fi
echo "no previous complete run in $run: nothing to compare with (first run)" | tee "$report/drift.txt"
printf '## ovlabel label drift\n\nNo previous complete labels to compare with (first run).\n' > "$report/drift.md"
