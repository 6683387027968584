"""The worker's folder shows the worker: `Worker.process` is a numbered recipe, its module
docstring names the file of every step, and `inference/` is grouped by those steps (its top
holds only the entry points). Read statically from the source, nothing imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "inference" / "worker.py"
# The worker's steps live in these folders; the top of inference/ keeps only the entry points.
STEP_FOLDERS = {"loop", "models", "drawing", "results", "safety"}
TOP = {"__init__.py", "__main__.py", "worker.py"}


def docstring_steps() -> dict[int, str]:
    """Step number -> its line(s) in the worker module's docstring."""
    doc = ast.get_docstring(ast.parse(WORKER.read_text())) or ""
    return {int(m[1]): m[2] for m in re.finditer(r"^(\d+)\. (.*(?:\n {3,}.*)*)", doc, re.M)}


def code_steps() -> set[int]:
    """The step numbers of the `# n.` / `# n-m.` comments in the worker's code."""
    steps: set[int] = set()
    for m in re.finditer(r"^\s*# (\d+)(?:-(\d+))?\. ", WORKER.read_text(), re.M):
        steps.update(range(int(m[1]), int(m[2] or m[1]) + 1))
    return steps


def test_every_step_of_the_recipe_is_listed_with_its_place():
    assert code_steps() == set(docstring_steps()) == set(range(1, 12))


def test_every_file_and_folder_the_recipe_names_exists():
    named = [name for text in docstring_steps().values()
             for name in re.findall(r"`([\w/]+(?:\.py|/))`", text)]
    assert named, "the steps name no file"
    missing = [name for name in named
               if not (ROOT / "inference" / name).exists() and not (ROOT / name).exists()]
    assert missing == []


def test_inference_is_grouped_by_the_workers_steps():
    inference = ROOT / "inference"
    folders = {p.name for p in inference.iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == STEP_FOLDERS
    assert {p.name for p in inference.glob("*.py")} == TOP
