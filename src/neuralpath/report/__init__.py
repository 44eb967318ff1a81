"""The study report: ``results.md`` (tables) and ``report.html`` (one self-contained file).

The HTML opens offline: styles inline, figures embedded as PNG data URIs, and every label or
name that comes from the data, the model or the user escaped.
"""

from __future__ import annotations

import base64
import html
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuralpath.attribution import PathwayGradCAM, PathwayGradient, signed_max_abs
from neuralpath.data import ImageDataset
from neuralpath.errors import LayerError, ZeroMapsWarning
from neuralpath.gating import GatedModel
from neuralpath.heads import block_index, transformer_blocks
from neuralpath.io import write_bytes_atomic
from neuralpath.report import figures
from neuralpath.report.tables import (
    COLUMNS,
    LEAKAGE_NOTE,
    TRANSFER_COLUMNS,
    ablation_rows,
    html_table,
    markdown_table,
)
from neuralpath.study import StudyResult

SECTIONS: tuple[tuple[str, str], ...] = (
    ("metrics", "Faithfulness and class relevance"),
    ("transfer", "Class pathways transferred to unseen samples"),
    ("ablations", "Ablations side by side"),
    ("samples", "Per-sample explanations"),
    ("layers", "Pathways layer by layer"),
    ("class-pathways", "Class pathways"),
    ("overlap", "Overlap between methods"),
    ("sparsity", "Sparsity distributions"),
    ("frontier", "GEN-CNP trade-off frontier"),
)
"""Section ids and titles of the HTML report, in order (tests check each is present)."""

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
tbody th{text-align:left}img{max-width:100%;display:block;margin:.5em 0}
.note{color:#555;font-size:.9em}nav a{margin-right:1em}
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _panel_maps(
    gated: GatedModel, result: StudyResult, images: Tensor
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Per method: (Pathway Gradient display maps [P, H, W], Grad-CAM of H_P [P, H, W], or None
    where no gate site suits Grad-CAM, see :func:`~neuralpath.attribution.default_cam_layer`)."""
    gradient = PathwayGradient(gated)
    try:
        cam: PathwayGradCAM | None = PathwayGradCAM(gated)
    except LayerError:
        cam = None
    count = images.shape[0]
    maps: dict[str, tuple[Tensor, Tensor | None]] = {}
    for method, outcome in result.methods.items():
        pathway = outcome.run.pathway.select(slice(0, count)).to(gated.device)
        grad_cam = None
        with warnings.catch_warnings():  # a blank panel is labelled in the figure instead
            warnings.simplefilter("ignore", ZeroMapsWarning)
            pg = signed_max_abs(gradient.attribute(images, pathway=pathway)).cpu()
            if cam is not None:
                grad_cam = cam.attribute(images, pathway=pathway)[:, 0].cpu()
        if grad_cam is not None:
            grad_cam = grad_cam / grad_cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        maps[method] = (pg, grad_cam)
    return maps


def _overlap_matrix(result: StudyResult) -> Tensor:
    runs = [m.run.pathway for m in result.methods.values()]
    matrix = torch.ones(len(runs), len(runs))
    for i, first in enumerate(runs):
        for j, second in enumerate(runs[:i]):
            matrix[i, j] = matrix[j, i] = first.binarize().jaccard(second.binarize()).mean()
    return matrix


Rows = Mapping[str, Mapping[str, Any]]


def _per_ablation(
    payload: Mapping[str, Any],
    part: str,
    table: Callable[[Rows], str],
    heading: Callable[[str], str],
) -> str:
    """``table(rows)`` of ``part`` (``methods`` or ``transfer``) for every ablation, each under
    ``heading(ablation)``."""
    return "".join(
        heading(ablation) + table(payload["interventions"][ablation][part])
        for ablation in payload["ablations"]
    )


def _side_by_side(payload: Mapping[str, Any], table: Callable[[Rows, Any], str]) -> str | None:
    """The ablations side by side (``table(rows, columns)``), or None with a single ablation."""
    if len(payload["ablations"]) < 2:
        return None
    parts = {a: payload["interventions"][a]["methods"] for a in payload["ablations"]}
    return table(*ablation_rows(parts))


def _html_tables(result: StudyResult, payload: Mapping[str, Any]) -> dict[str, str]:
    """The ``metrics``, ``transfer`` and ``ablations`` sections of the HTML report."""
    config = result.config

    def heading(ablation: str) -> str:
        return f"<h3>{html.escape(ablation)} ablation</h3>"

    side = _side_by_side(payload, html_table)
    samples = next(iter(payload["methods"].values()))["n"]
    return {
        "metrics": _per_ablation(payload, "methods", html_table, heading)
        + f'<p class="note">{samples} samples of {html.escape(config.data)} '
        f"({html.escape(config.split)}); methods with a "
        f"sparsity knob dropped {result.sparsity:.3f} of the units. ↑ higher is better, "
        "↓ lower is better.</p>",
        "transfer": _per_ablation(
            payload, "transfer", lambda rows: html_table(rows, TRANSFER_COLUMNS), heading
        )
        + f'<p class="note">Class pathways from the first {config.transfer_per_class} '
        f"correctly predicted training samples per class (firing frequency ≥ {config.theta}), "
        "applied to each evaluation sample's predicted class.</p>",
        "ablations": f"<h3>{html.escape(' vs '.join(payload['ablations']))}</h3>{side}"
        if side is not None
        else '<p class="note">This study ran under one ablation only (see <code>--ablation'
        "</code>).</p>",
    }


def _markdown(payload: Mapping[str, Any], title: str) -> str:
    """``results.md``: per ablation, the metrics and transfer tables; then the side-by-side."""

    def heading(ablation: str) -> str:
        return f"### {ablation} ablation\n\n"

    def table(rows: Rows, columns: Any = COLUMNS) -> str:
        return markdown_table(rows, columns) + "\n\n"

    side = _side_by_side(payload, table)
    return (
        f"# {title}\n\n{LEAKAGE_NOTE}\n\n## Faithfulness and class relevance\n\n"
        + _per_ablation(payload, "methods", table, heading)
        + "## Transfer (class pathways)\n\n"
        + _per_ablation(payload, "transfer", lambda rows: table(rows, TRANSFER_COLUMNS), heading)
        + ("" if side is None else f"## {' vs '.join(payload['ablations'])}\n\n{side}")
    ).rstrip("\n") + "\n"


def _panels(
    result: StudyResult, gated: GatedModel, evaluation: ImageDataset, panel_samples: int
) -> list[str]:
    """One figure per shown sample: the image and every method's maps (first ablation)."""
    first = next(iter(result.methods.values())).run
    class_names = list(evaluation.class_names)
    count = min(panel_samples, first.labels.numel())
    images = torch.stack([evaluation[i][0] for i in range(count)]).to(gated.device)
    maps = _panel_maps(gated, result, images)
    shown = evaluation.denormalize(images.cpu()).clamp(0, 1)
    panels = []
    for i in range(count):
        label = class_names[int(first.labels[i])]
        predicted = class_names[int(first.outcome.prediction[i])]
        figure = figures.sample_panel(
            shown[i],
            {m: (v[0][i], None if v[1] is None else v[1][i]) for m, v in maps.items()},
            f"sample {i}: label {label}, predicted {predicted}",
        )
        panels.append(_img(figure, f"explanations of sample {i}"))
    return panels


def layer_labels(gated: GatedModel, layers: Sequence[str]) -> list[str]:
    """Display labels of gate sites ``layers`` of ``gated``: in a transformer, the block and the
    unit type (``"block 0 heads"``, ``"block 0 MLP"``; ``"block 0 <name>"`` for other sites in a
    block), else the site's name. Labels two sites would share get the site name appended."""
    blocks = transformer_blocks(gated.model)
    labels = []
    for name in layers:
        site = gated.site(name)
        block = block_index(site.module_name, blocks) if blocks else None
        kind = {"head": "heads", "token": "MLP"}.get(site.kind, name)
        labels.append(name if block is None else f"block {block} {kind}")
    return [
        f"{label} ({name})" if labels.count(label) > 1 else label
        for label, name in zip(labels, layers, strict=True)
    ]


def _layer_table(kept_per_layer: Mapping[str, Sequence[float]], labels: Sequence[str]) -> str:
    """HTML table: mean fraction of units kept per gate site (rows, labelled) and method."""
    methods = list(kept_per_layer)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th>"
        + "".join(f"<td>{kept_per_layer[m][i]:.3f}</td>" for m in methods)
        + "</tr>"
        for i, label in enumerate(labels)
    )
    return (
        f'<table class="layers"><thead><tr><th>units kept</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _class_figures(result: StudyResult, layers: list[str], class_names: list[str]) -> list[str]:
    """Each method's class pathways (first ablation); ``layers``: the display labels."""
    class_figures = []
    for method, outcome in result.methods.items():
        if outcome.classes is None:
            continue
        freq = outcome.classes.frequency
        flat = torch.cat([freq[n].reshape(freq.batch_size, -1) for n in freq.units], dim=1)
        figure = figures.class_pathways(
            flat.cpu(), list(freq.units.values()), layers, class_names, method,
            outcome.classes.theta,
        )  # fmt: skip
        class_figures.append(_img(figure, f"class pathways of {method}"))
    return class_figures


def _figure_sections(
    result: StudyResult,
    gated: GatedModel,
    evaluation: ImageDataset,
    panel_samples: int,
    frontier: Sequence[Mapping[str, float]] | None,
) -> dict[str, str]:
    """The figure sections of the HTML report (first ablation)."""
    methods = list(result.methods)
    labels = layer_labels(gated, next(iter(result.methods.values())).run.pathway.layer_names)
    kept_per_layer = {
        m: [float(v.mean()) for v in r.run.pathway.binarize().kept_fraction_per_layer().values()]
        for m, r in result.methods.items()
    }
    kept = {m: r.run.outcome.kept_fraction for m, r in result.methods.items()}
    return {
        "samples": "".join(_panels(result, gated, evaluation, panel_samples)),
        "layers": _img(figures.layer_profile(kept_per_layer, labels), "units kept per layer")
        + _layer_table(kept_per_layer, labels),
        "class-pathways": "".join(_class_figures(result, labels, list(evaluation.class_names))),
        "overlap": _img(figures.overlap(_overlap_matrix(result), methods), "pathway overlap"),
        "sparsity": _img(figures.sparsity_distribution(kept), "kept fraction distributions"),
        "frontier": _img(figures.frontier(frontier), "GEN-CNP trade-off frontier")
        if frontier
        else '<p class="note">No α sweep was given for this study (see <code>neuralpath '
        "fit-gencnp</code> and <code>benchmarks/gencnp_study.py</code>).</p>",
    }


def build_report(
    result: StudyResult,
    gated: GatedModel,
    evaluation: ImageDataset,
    out_dir: str | os.PathLike[str],
    *,
    panel_samples: int = 4,
    frontier: Sequence[Mapping[str, float]] | None = None,
    title: str = "neuralpath study",
) -> tuple[Path, Path]:
    """Write ``results.md`` and ``report.html`` into ``out_dir``; returns both paths.

    Tables cover every ablation of the study; the figures show the first ablation's pathways
    (``gated``: the target under that ablation)."""
    out = Path(out_dir)
    payload = result.to_json()
    sections = {
        **_html_tables(result, payload),
        **_figure_sections(result, gated, evaluation, panel_samples, frontier),
    }
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in SECTIONS)
    body = "".join(
        f'<section id="{sid}"><h2>{html.escape(t)}</h2>{sections[sid]}</section>'
        for sid, t in SECTIONS
    )
    target = result.target
    layers = len(next(iter(result.methods.values())).run.pathway.layer_names)
    header = (
        f"<h1>{html.escape(title)}</h1><p>Target <b>{html.escape(str(target.get('arch')))}</b> "
        f"trained on {html.escape(str(target.get('data')))} (test accuracy "
        f"{html.escape(_fmt(target.get('test_accuracy')))}); {layers} gated layers; "
        f"ablations: {html.escape(', '.join(payload['ablations']))}.</p>"
        f'<p class="note">{html.escape(LEAKAGE_NOTE)}</p>'
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{header}<nav>{nav}</nav>{body}</body></html>"
    )
    html_path, md_path = out / "report.html", out / "results.md"
    write_bytes_atomic(html_path, page.encode("utf-8"))
    write_bytes_atomic(md_path, _markdown(payload, title).encode("utf-8"))
    return md_path, html_path


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
