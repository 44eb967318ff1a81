"""Metric tables of a study as Markdown and HTML rows, with each metric's direction.

A column key may name one ablation's value, ``"<key>@<ablation>"`` (the side-by-side table of
:func:`ablation_rows`); it is formatted like ``<key>``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from neuralpath.metrics.leakage import HIGHER_IS_BETTER

Column = tuple[str, str, str]
"""``(key, header, direction)``: direction "↑" higher is better, "↓" lower is better, "" neither."""


def _leak(key: str, header: str) -> Column:
    return (key, header, "↑" if HIGHER_IS_BETTER[key] else "↓")


FAITHFULNESS: tuple[Column, ...] = (
    ("agreement", "agreement", "↑"),
    ("accuracy", "accuracy", "↑"),
    ("mic", "mIC %", "↑"),
    ("mdc", "mDC %", "↓"),
)
LEAKAGE: tuple[Column, ...] = (
    _leak("blank_agreement", "blank agr. (plain)"),
    _leak("swap_follows_input", "swap → input"),
    _leak("swap_follows_mask", "swap → mask"),
    _leak("input_attributable_confidence", "input-attr. conf."),
)
RELEVANCE: tuple[Column, ...] = (
    ("aciou", "acIOU %", "↑"),
    ("kept_fraction_mean", "kept (mean ± sd)", ""),
)
CONNECTIVITY: tuple[Column, ...] = (
    ("disconnected_n", "disconnected", "↓"),
    ("repaired_n", "repaired", ""),
)
"""Pathways whose pathway model ignores the input (counted unfaithful), and those the connecting
repair widened (:mod:`neuralpath.methods.connect`)."""
COLUMNS: tuple[Column, ...] = (
    *FAITHFULNESS,
    *LEAKAGE,
    *RELEVANCE,
    *CONNECTIVITY,
    ("seconds_per_image", "s / image", "↓"),
    ("forward_equivalents", "forwards / batch", "↓"),
)
TRANSFER_COLUMNS: tuple[Column, ...] = (
    *FAITHFULNESS,
    *LEAKAGE,
    _leak("transfer_specificity", "forced to c"),
    *RELEVANCE,
)
COMPARED: tuple[Column, ...] = (
    ("agreement", "agreement", "↑"),
    ("mic", "mIC %", "↑"),
    ("mdc", "mDC %", "↓"),
    ("aciou", "acIOU %", "↑"),
    _leak("blank_agreement", "blank agr."),
    _leak("swap_follows_mask", "swap → mask"),
)
"""What the side-by-side table compares across ablations."""

LEAKAGE_NOTE = (
    "Leakage columns: blank agr. is the share of samples whose pathway model still predicts the "
    "explained class when fed a blank input (the data-set mean image; the plain model's share "
    "in brackets), swap → input / swap → mask the share of samples that, run through the "
    "pathway of a sample of another class, predict their own class / that sample's class, "
    "input-attr. conf. is p'(sample) − p'(blank), and forced to c the share of samples that "
    "another class c's class pathway makes predict c, so a high blank agr., swap → mask or "
    "forced to c means the mask, not the input, carries the prediction. disconnected counts "
    "pathways whose pathway model's output does not depend on the input (counted unfaithful), "
    "repaired those the connecting repair widened so that it does."
)


_SHARES = frozenset(("agreement", "accuracy", *HIGHER_IS_BETTER))
"""Keys shown with three decimals (shares and confidences)."""


def _number(key: str, value: float, row: Mapping[str, Any], suffix: str) -> str:
    """``value`` of metric ``key``; ``suffix`` (``"@<ablation>"`` or ``""``) finds its siblings."""
    if key == "kept_fraction_mean":
        return f"{value:.3f} ± {row.get('kept_fraction_std' + suffix, 0.0):.3f}"
    if key.endswith("_n"):
        return str(int(value))
    plain = row.get("blank_agreement_plain" + suffix)
    if key == "blank_agreement" and plain is not None:
        return f"{value:.3f} ({plain:.3f})"
    if key in _SHARES:
        return f"{value:.3f}"
    if key == "seconds_per_image":
        return f"{value:.4f}"
    return f"{value:.2f}"


def _cell(key: str, row: Mapping[str, Any]) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    base, at, ablation = key.partition("@")
    return _number(base, value, row, at + ablation)


def markdown_table(
    rows: Mapping[str, Mapping[str, Any]], columns: Sequence[Column] = COLUMNS
) -> str:
    """One row per method; headers carry ↑/↓."""
    header = "| method | " + " | ".join(f"{h} {d}".strip() for _, h, d in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = [header, rule]
    for method, row in rows.items():
        lines.append(f"| {method} | " + " | ".join(_cell(k, row) for k, _, _ in columns) + " |")
    return "\n".join(lines)


def html_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[Column] = COLUMNS) -> str:
    """The same table as HTML; method names are escaped."""
    head = "".join(f"<th>{html.escape(f'{h} {d}'.strip())}</th>" for _, h, d in columns)
    body = "".join(
        f"<tr><th>{html.escape(method)}</th>"
        + "".join(f"<td>{html.escape(_cell(k, row))}</td>" for k, _, _ in columns)
        + "</tr>"
        for method, row in rows.items()
    )
    return f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def ablation_rows(
    interventions: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], tuple[Column, ...]]:
    """Rows and columns of the side-by-side table: for each metric of :data:`COMPARED`, one
    column per ablation. ``interventions``: ablation -> method -> its summary."""
    ablations: Sequence[str] = list(interventions)
    rows: dict[str, dict[str, Any]] = {}
    for ablation, methods in interventions.items():
        for method, summary in methods.items():
            rows.setdefault(method, {}).update(
                {f"{key}@{ablation}": value for key, value in summary.items()}
            )
    columns = tuple(
        (f"{key}@{ablation}", f"{header} {ablation}", direction)
        for key, header, direction in COMPARED
        for ablation in ablations
    )
    return rows, columns
