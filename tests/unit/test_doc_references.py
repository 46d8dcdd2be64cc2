"""Every ``*.md`` file that code, tests or docs point a reader to is one the project ships.

``backends/base.py`` once sent readers to a design document the repository does not have.
A name counts as found next to the file that mentions it, at the repository root, or under
``docs/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["batchworks", "tests", "bench", "examples", "docs"]
MENTION = re.compile(r"(?<![\w/.-])((?:\.\.?/)*[\w./-]*[\w-]\.md)\b")


def _sources() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    for folder in SCANNED:
        found += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.md"))
    return found


def _exists(name: str, mentioned_in: Path) -> bool:
    return any((base / name).is_file() for base in (mentioned_in.parent, ROOT, ROOT / "docs"))


def test_the_scan_finds_mentions() -> None:
    # A regex that matched nothing would pass the test below without looking.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bench/README.md" in MENTION.findall(text)


@pytest.mark.parametrize("source", _sources(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_mentioned_markdown_file_exists(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    missing = sorted({name for name in MENTION.findall(text) if not _exists(name, source)})
    assert not missing, f"{source.relative_to(ROOT)} points to {missing}, which the project lacks"
