#!/usr/bin/env bash
# FMbSeg Stage 1 pseudo-labels (seed 003 §3.2, §4.1): Stage 1.1 and Stage 1.2 (SAM automatic masks labelled
# by the mean CLIP feature), CLIP ViT-L/14 (OpenAI), SAM ViT-H, COCO-Stuff's 171 classes, the single
# template "a photo of a {}.", bf16 autocast on the first GPU.
# Usage: recipes/fmbseg-coco-stuff.sh IMAGES OUT
set -euo pipefail
images=${1:?usage: $0 IMAGES OUT}
out=${2:?usage: $0 IMAGES OUT}
ovlabel pseudo-label "$images" --out "$out" \
  --vocab coco-stuff --templates fmbseg \
  --clip clip:ViT-L-14/openai --sam sam:vit_h \
  --stages 1.1,1.2 --classifier fmbseg \
  --device cuda --precision bf16 --clip-batch-size 128 --image-batch 16
