"""Metric tables of a study as Markdown and HTML rows, with each metric's direction."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # key, header, direction ("↑" higher is better, "↓" lower is better, "" neither)
    ("agreement", "agreement", "↑"),
    ("accuracy", "accuracy", "↑"),
    ("mic", "mIC %", "↑"),
    ("mdc", "mDC %", "↓"),
    ("aciou", "acIOU %", "↑"),
    ("kept_fraction_mean", "kept (mean ± sd)", ""),
    ("seconds_per_image", "s / image", "↓"),
    ("forward_equivalents", "forwards / batch", "↓"),
)


def _cell(key: str, row: Mapping[str, Any]) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "kept_fraction_mean":
        return f"{value:.3f} ± {row.get('kept_fraction_std', 0.0):.3f}"
    if key in ("agreement", "accuracy"):
        return f"{value:.3f}"
    if key == "seconds_per_image":
        return f"{value:.4f}"
    return f"{value:.2f}"


def markdown_table(rows: Mapping[str, Mapping[str, Any]], columns=COLUMNS) -> str:
    """One row per method; headers carry ↑/↓."""
    header = "| method | " + " | ".join(f"{h} {d}".strip() for _, h, d in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = [header, rule]
    for method, row in rows.items():
        lines.append(f"| {method} | " + " | ".join(_cell(k, row) for k, _, _ in columns) + " |")
    return "\n".join(lines)


def html_table(rows: Mapping[str, Mapping[str, Any]], columns=COLUMNS) -> str:
    """The same table as HTML; method names are escaped."""
    head = "".join(f"<th>{html.escape(f'{h} {d}'.strip())}</th>" for _, h, d in columns)
    body = "".join(
        f"<tr><th>{html.escape(method)}</th>"
        + "".join(f"<td>{html.escape(_cell(k, row))}</td>" for k, _, _ in columns)
        + "</tr>"
        for method, row in rows.items()
    )
    return f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{body}</tbody></table>"


TRANSFER_COLUMNS = COLUMNS[:6]
