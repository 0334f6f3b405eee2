#!/usr/bin/env bash
# Set up tune-search in ./.venv: Debian's Fashion-MNIST where apt is available, then the
# Python package with its pinned torch/torchvision; `--test` adds what the tests need.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
EXTRAS=""
case "${1:-}" in
  --test) EXTRAS="[test]" ;;
  "") ;;
  *) echo "usage: ./setup.sh [--test]" >&2; exit 2 ;;
esac

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: apt is not available here: the demo will fetch Fashion-MNIST with torchvision's downloader into ~/.cache/tune-search"
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e ".${EXTRAS}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import search, trainable, torch, torchvision, ray, optuna" \
  || { echo "setup: the install failed (see pip's messages above)" >&2; exit 1; }
