"""The README is the map a newcomer follows: every file and folder it names exists, and the
architecture walk names them in the order a `/pony` meets them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

# A repository path in backticks: starts at one of our top-level folders, so `config.toml`
# keys and shell commands are not mistaken for paths.
_TOP = ("bot", "cogs", "inference", "ponybot_core", "ponybot_request", "ponybot_cli",
        "ponybot_testkit", "tests", "bench", "tools", ".ci", "deploy", "monitoring")
_PATH = re.compile(r"`((?:" + "|".join(re.escape(t) for t in _TOP) + r")/[\w./-]*)`")


def named_paths(text: str) -> list[str]:
    return [m.group(1).split("::")[0] for m in _PATH.finditer(text)]


def test_every_path_the_readme_names_exists() -> None:
    missing = sorted({p for p in named_paths(README) if not (ROOT / p.rstrip("/")).exists()})
    assert not missing, f"README names files that do not exist: {missing}"


def test_the_path_finder_finds_paths_and_only_paths() -> None:
    # The check above is only as good as its finder: it must see a path and skip the rest.
    assert named_paths("see `bot/submit.py` and `inference/models/` but not `queue.lease_s`") \
        == ["bot/submit.py", "inference/models/"]


def test_every_test_file_the_threat_table_names_exists() -> None:
    table = README[README.index("## Every way in"):README.index("## Test\n")]
    files = set(re.findall(r"`tests/(test_\w+\.py)", table))
    assert files, "the threat table names no test"
    missing = sorted(f for f in files if not (ROOT / "tests" / f).exists())
    assert not missing, f"the threat table names test files that do not exist: {missing}"


def test_every_test_the_threat_table_names_exists() -> None:
    table = README[README.index("## Every way in"):README.index("## Test\n")]
    named = re.findall(r"`tests/(test_\w+\.py)::(test_\w+)", table)
    # A row may name further tests of the same file as `::test_name`.
    current = None
    for file, test in re.findall(r"`(?:tests/(test_\w+\.py))?::(test_\w+)`?", table):
        current = file or current
        named.append((current, test))
    assert named
    missing = sorted({f"{f}::{t}" for f, t in named
                      if f and not re.search(rf"def {re.escape(t)}\b",
                                             (ROOT / "tests" / f).read_text(encoding="utf-8"))})
    assert not missing, f"the threat table names tests that do not exist: {missing}"
