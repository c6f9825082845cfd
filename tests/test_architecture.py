"""ARCHITECTURE.md stays true: every file its "where to find it" table names exists and defines
the name given beside it, so a contributor who follows the map lands on the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
ROW = re.compile(r"^\| (?P<behaviour>[^|]+?) \| `(?P<file>[^`]+)` \| `(?P<name>[^`]+)` \|$")


def _rows() -> list[re.Match]:
    return [m for line in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines()
            if (m := ROW.match(line))]


def test_the_map_lists_at_least_twelve_behaviours():
    assert len(_rows()) >= 12


def test_every_behaviour_is_where_the_map_says():
    missing = []
    for row in _rows():
        path = ROOT / row["file"]
        defined = re.compile(rf"^\s*(def|class|async def)\s+{re.escape(row['name'])}\b|^{re.escape(row['name'])}\s*[:=]",
                             re.MULTILINE)
        if not path.is_file() or not defined.search(path.read_text(encoding="utf-8")):
            missing.append(f"{row['behaviour']}: {row['name']} in {row['file']}")
    assert not missing, "ARCHITECTURE.md points at code that is not there:\n" + "\n".join(missing)
