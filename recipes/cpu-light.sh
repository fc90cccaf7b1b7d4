#!/usr/bin/env bash
# A lighter FMbSeg Stage 1 for machines without a GPU: CLIP ViT-B/16 and SAM ViT-B (about 4x cheaper than
# the defaults on CPU), a smaller over-sampling resolution, a 16x16 grid for Stage 1.2's automatic masks
# (SAM's mask decoder costs as much per prompt on any SAM size), and overlays to eyeball the result.
# Usage: recipes/cpu-light.sh IMAGES OUT [VOCAB]
set -euo pipefail
images=${1:?usage: $0 IMAGES OUT [VOCAB]}
out=${2:?usage: $0 IMAGES OUT [VOCAB]}
vocab=${3:-coco-stuff}
ovlabel pseudo-label "$images" --out "$out" --vocab "$vocab" \
  --clip clip:ViT-B-16/openai --sam sam:vit_b --device cpu \
  --resolution 448 --points-per-side 16 --overlays
