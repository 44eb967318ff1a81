"""The benchmarks' shared writer of docs/results.md sections."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import write_section  # noqa: E402


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n## A\n\nold a\n\n## B\n\nkeep b\n")
    write_section(doc, "## A\n\nnew a\n")
    assert doc.read_text() == "# Results\n\n## A\n\nnew a\n\n## B\n\nkeep b\n"
    write_section(doc, "## B\n\nnew b")
    write_section(doc, "## C\n\nc")
    assert doc.read_text() == "# Results\n\n## A\n\nnew a\n\n## B\n\nnew b\n\n## C\n\nc\n"
    write_section(tmp_path / "new.md", "## A\n\na")
    assert (tmp_path / "new.md").read_text() == "# Results\n\n## A\n\na\n"
    with pytest.raises(ValueError, match="heading"):
        write_section(doc, "no heading")
