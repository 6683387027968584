"""The bot host's light install, done for real: what the bot image does, in a fresh virtualenv.

Copies what the images' build context lets in (`deploy/Dockerfile.dockerignore`'s `!` lines)
into a temporary folder, runs `deploy/install.sh bot --venv <fresh> --check` there (the step
the bot image RUNs), and prints the wall time, whether torch (or any other worker-only
package) got installed, how many distributions and how many MB the virtualenv holds. Exits 1
when the install or its check fails or a worker-only package is installed. `.ci/run` runs it,
so CI proves the light install works without torch. pip's own cache serves repeated runs;
the first run on a machine downloads the wheels (about 60 MB).

    python bench/light_install.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
WORKER_ONLY = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "spandrel",
               "nvidia-cuda-runtime-cu12", "triton")


def build_context(into: Path) -> list[str]:
    """Copy the files the images' build context holds: the `!` (let in) lines of the
    dockerignore, less its `**/x` exclusions. Returns the top-level names copied."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    kept = [line[1:] for line in lines if line.startswith("!")]
    dropped = [line.removeprefix("**/") for line in lines if line.startswith("**/")]
    ignore = shutil.ignore_patterns(*dropped)
    for name in kept:
        source, target = ROOT / name, into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        elif not any(fnmatch.fnmatch(source.name, pattern) for pattern in dropped):
            shutil.copy2(source, target)
    return kept


def installed(venv: Path) -> dict[str, str]:
    listing = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list",
                              "--format=json", "--disable-pip-version-check"],
                             check=True, capture_output=True, text=True).stdout
    return {row["name"].lower(): row["version"] for row in json.loads(listing)}


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="ponybot-light-"))
    try:
        source, venv = work / "src", work / "venv"
        copied = build_context(source)
        started = time.perf_counter()
        result = subprocess.run(["bash", str(source / "deploy" / "install.sh"), "bot",
                                 "--venv", str(venv), "--check"],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - started
        print(f"bench/light_install.py  build context: {' '.join(copied)}")
        print(f"deploy/install.sh bot --check: exit {result.returncode} in {seconds:.1f} s "
              f"(wall; {sys.version.split()[0]}, pip's cache warm or not)")
        if result.returncode != 0:
            print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
            return 1
        print("  " + result.stdout.strip().splitlines()[-1])
        packages = installed(venv)
        heavy = sorted(name for name in WORKER_ONLY if name in packages)
        print(f"  {len(packages)} distributions, {folder_mb(venv):.0f} MB in the virtualenv")
        print(f"  torch installed: {'yes' if 'torch' in packages else 'no'}; "
              f"worker-only packages installed: {', '.join(heavy) or 'none'}")
        return 1 if heavy else 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
