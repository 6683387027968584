#!/usr/bin/env bash
# Installs ponybot into a virtualenv: exactly the steps both images RUN (deploy/Dockerfile), and
# what a systemd host runs by hand. CI runs the bot install into a fresh virtualenv with --check
# (bench/light_install.py), so what the bot image does is tested without a Docker daemon.
#
#   deploy/install.sh bot    [--venv DIR] [--check]    the light install: no torch, no CUDA
#   deploy/install.sh worker [--venv DIR] [--torch-index URL] [--check]
#
# --venv         where the virtualenv goes (default /opt/ponybot/venv); made if missing.
# --torch-index  install torch and torchvision from this index first; for a machine without a
#                GPU: https://download.pytorch.org/whl/cpu (PyPI's Linux wheels carry CUDA).
# --check        after installing, prove it from outside the source folder: the bot side
#                imports whole with no torch installed (bot), or the worker imports (worker).
# The source is the folder above this script; $PYTHON picks the interpreter (python3).
set -euo pipefail

usage() { sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

role=${1:-}
[ "$role" = bot ] || [ "$role" = worker ] || usage
shift
venv=/opt/ponybot/venv
torch_index=""
check=false
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv=${2:?--venv needs a folder}; shift 2 ;;
    --torch-index) torch_index=${2:?--torch-index needs a URL}; shift 2 ;;
    --check) check=true; shift ;;
    *) usage ;;
  esac
done
[ -z "$torch_index" ] || [ "$role" = worker ] || { echo "--torch-index is for worker" >&2; exit 2; }

src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

# 1. The virtualenv (the images' Python is the only one in them: no system site-packages).
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

# 2. The CPU (or another CUDA) build of torch first, when asked: pip then keeps it, because
#    the worker extra's `torch>=2.4` is already satisfied.
if [ -n "$torch_index" ]; then
  "${pip[@]}" --index-url "$torch_index" torch torchvision
fi

# 3. ponybot itself (not editable: the image holds no source), the bot alone or with the worker.
if [ "$role" = bot ]; then
  "${pip[@]}" "$src"
else
  "${pip[@]}" "$src[worker]"
fi

# 4. The entrypoint that reads the secrets from files (deploy/entrypoint.sh), beside python.
install -m 0755 "$src/deploy/entrypoint.sh" "$venv/bin/ponybot-entrypoint"

# 5. The proof, run from / so that the installed package is imported, not the source folder.
if $check; then
  if [ "$role" = bot ]; then
    code='
import importlib, importlib.util, pkgutil, sys
import bot.__main__, ponybot_cli.main, cogs
for cog in pkgutil.iter_modules(cogs.__path__):
    importlib.import_module(f"cogs.{cog.name}")
heavy = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "spandrel")
installed = [m for m in heavy if importlib.util.find_spec(m) is not None]
imported = [m for m in heavy if m in sys.modules]
assert not installed, f"the bot install brought {installed}"
assert not imported, f"the bot side imported {imported}"
from ponybot_request import clip_tokens  # reads the tokenizer files the package carries
assert clip_tokens.count("twilight sparkle, solo") > 0
print("install.sh --check: bot side imports whole, counts CLIP tokens; no torch installed")'
  else
    code='
import torch, diffusers, spandrel, inference.worker
cuda = torch.version.cuda or "none (CPU build)"
print(f"install.sh --check: worker imports; torch {torch.__version__}, CUDA {cuda}")'
  fi
  (cd / && "$venv/bin/python" -c "$code")
  (cd / && "$venv/bin/ponybot" --help >/dev/null)
  (cd / && "$venv/bin/ponybot-entrypoint" "$venv/bin/python" -m bot --help >/dev/null)
fi
