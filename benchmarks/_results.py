"""Shared by the benchmark scripts: write one ``## Section`` of docs/results.md in place."""

from __future__ import annotations

import re
from pathlib import Path

from neuralpath.io import write_bytes_atomic


def write_section(path: Path, section: str) -> None:
    """Replace the section of ``path`` whose ``## Title`` line starts ``section``, or append it.

    The section runs to the next ``## `` heading; other sections are kept as they are; the file
    is written atomically.
    """
    heading = section.lstrip().splitlines()[0].rstrip()
    if not heading.startswith("## "):
        raise ValueError(f"a section must start with a '## ' heading, got {heading!r}")
    text = path.read_text() if path.exists() else "# Results\n"
    body = section.strip() + "\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + body
    write_bytes_atomic(path, text.encode("utf-8"))
