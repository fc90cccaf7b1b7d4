#!/usr/bin/env bash
# On a connected machine: download the default weights into the standard caches, then copy those caches
# (or just the two files) to the offline machine. ovlabel finds them there with no network.
#   recipes/offline-weights.sh fetch          # connected machine
#   HF_HOME=... TORCH_HOME=... ovlabel models # offline machine: both show "yes"
set -euo pipefail
case "${1:-}" in
  fetch)
    python - <<'PY'
from ovlabel.models.registry import MODEL_PRESETS, parse_model, weights_file
for family, spec in MODEL_PRESETS["default"].items():
    print(family, weights_file(parse_model(spec, family)))
PY
    echo "Copy \$HF_HOME (default ~/.cache/huggingface) and \$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)."
    ;;
  *)
    echo "usage: $0 fetch" >&2
    exit 2
    ;;
esac
