"""Shared by the benchmark scripts: write one ``## Section`` of docs/results.md in place."""

from __future__ import annotations

import re
from pathlib import Path

from neuralpath.io import write_bytes_atomic


def replace_section(path: Path, title: str, body: str) -> None:
    """Replace the ``## {title}`` section of ``path`` (up to the next ``## ``), or append it.

    Other sections are kept as they are; the file is written atomically.
    """
    text = path.read_text() if path.exists() else "# Results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    write_bytes_atomic(path, text.encode("utf-8"))
