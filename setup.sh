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
# uv installs the same pins as pip about four times faster (it unpacks torch's 6 GB of CUDA
# wheels in parallel); it does not read pip's configuration, so it is handed pip's indexes,
# find-links, constraints and certificate file.
# Plain pip where uv cannot be had or fails.
uv_args() {
  .venv/bin/python - <<'PY'
import shlex, subprocess, sys

listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
rank = {"global": 0, "install": 1, ":env:": 2}  # pip's own precedence
settings = {}
for line in listed.splitlines():
    name, _, value = line.partition("=")
    section, _, key = name.rpartition(".")
    if section in rank and rank[section] >= settings.get(key, (-1, ""))[0]:
        settings[key] = (rank[section], value.strip("'\""))
flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "--constraint", "cert": "--cert"}
args = [w for key, flag in flags.items() if key in settings for item in settings[key][1].split() for w in (flag, item)]
args += ["--no-index"] if settings.get("no-index", (0, ""))[1].lower() in ("1", "true", "yes") else []
print(shlex.join(["--index-strategy", "unsafe-best-match", *args]))  # pip's rule: the best version on any index
PY
}
installed=false
if .venv/bin/python -m pip install -q uv==0.13.9 >/dev/null 2>&1 && UV_ARGS=$(uv_args); then
  eval "set -- $UV_ARGS"
  .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode "$@" -e ".${EXTRAS}" && installed=true
fi
if [ "$installed" = false ]; then
  .venv/bin/python -m pip install -q -e ".${EXTRAS}" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import tune_search, torch, torchvision, ray, optuna" \
  || { echo "setup: the install failed (see pip's messages above)" >&2; exit 1; }
