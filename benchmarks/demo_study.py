"""The demo study's section of ``docs/results.md``, written from the files ``make demo`` makes.

Reads ``RUNS/demo/<arch>/results.json`` (``neuralpath compare`` run under zero and mean
ablation) and ``RUNS/demo/timing.json`` when present, and writes ``## Demo study (`make demo`)``:
per target and ablation, the instance pathways' faithfulness beside their leakage controls, the
transferred class pathways with their specificity, and the GEN-CNP paper's claims judged under
each ablation. Nothing in the section is typed by hand.

    .venv/bin/python benchmarks/demo_study.py          # after make demo
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, shown, write_section  # noqa: E402

SECTION = "## Demo study (`make demo`)"
ARCHS = (("vgg11", "VGG-11"), ("alexnet", "AlexNet"))
INSTANCE = (
    ("agreement", "agreement ↑", "{:.3f}"),
    ("mic", "mIC % ↑", "{:.2f}"),
    ("mdc", "mDC % ↓", "{:.2f}"),
    ("aciou", "acIOU % ↑", "{:.1f}"),
    ("kept_fraction_mean", "kept", "{:.3f}"),
    ("blank_agreement", "blank agr. ↓", "{:.2f}"),
    ("swap_follows_input", "swap → input ↑", "{:.2f}"),
    ("swap_follows_mask", "swap → mask ↓", "{:.2f}"),
    ("input_attributable_confidence", "input-attr. conf. ↑", "{:.3f}"),
    ("disconnected_n", "disconnected ↓", "{}"),
    ("repaired_n", "repaired", "{}"),
    ("seconds_per_image", "s / image", "{:.4f}"),
)
TRANSFER = (
    ("agreement", "agreement ↑", "{:.3f}"),
    ("mdc", "mDC % ↓", "{:.2f}"),
    ("kept_fraction_mean", "kept", "{:.3f}"),
    ("transfer_specificity", "forced to another class ↓", "{:.2f}"),
    ("blank_agreement", "blank agr. ↓", "{:.2f}"),
    ("swap_follows_mask", "swap → mask ↓", "{:.2f}"),
)


def table(
    rows: Mapping[str, Mapping[str, Any]], columns: tuple[tuple[str, str, str], ...]
) -> list[str]:
    head = "| method | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [head, "|---|" + "---|" * len(columns)]
    for method, row in rows.items():
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("–" if value is None else fmt.format(value))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


Claim = tuple[str, Callable[[Mapping[str, Any]], tuple[str, bool] | None]]


def _value(
    results: Mapping[str, Any], method: str, key: str, part: str = "methods"
) -> float | None:
    row = results.get(part, {}).get(method)
    return None if row is None else row.get(key)


RULES: dict[str, Callable[[float, float], bool]] = {
    "above": lambda a, b: a > b,
    "at least": lambda a, b: a >= b,
    "at most": lambda a, b: a <= b,
}


def _compare(method: str, other: str, key: str, rule: str, fmt: str = "{:.1f}") -> Callable:
    def judge(results: Mapping[str, Any]) -> tuple[str, bool] | None:
        a, b = _value(results, method, key), _value(results, other, key)
        if a is None or b is None:
            return None
        return f"{fmt.format(a)} vs {fmt.format(b)}", RULES[rule](a, b)

    return judge


def _transfer_holds(results: Mapping[str, Any]) -> tuple[str, bool] | None:
    agreement = _value(results, "gencnp", "agreement", "transfer")
    forced = _value(results, "gencnp", "transfer_specificity", "transfer")
    if agreement is None or forced is None:
        return None
    return f"agreement {agreement:.2f}, forced {forced:.2f}", agreement >= 0.9 and forced <= 0.2


def _follows_input(method: str, limit: float = 0.1) -> Callable:
    def judge(results: Mapping[str, Any]) -> tuple[str, bool] | None:
        follows = _value(results, method, "swap_follows_mask")
        blank = _value(results, method, "blank_agreement")
        if follows is None or blank is None:
            return None
        return f"swap→mask {follows:.2f}, blank {blank:.2f}", follows <= limit and blank <= limit

    return judge


CLAIMS: tuple[Claim, ...] = (
    ("control: GEN-CNP's pathways compute from the input (both ≤ 0.1)", _follows_input("gencnp")),
    ("control: DGR's pathways compute from the input (both ≤ 0.1)", _follows_input("dgr")),
    ("GEN-CNP's acIOU above DGR-R's", _compare("gencnp", "dgr-r", "aciou", "above")),
    ("GEN-CNP's acIOU above DGR's", _compare("gencnp", "dgr", "aciou", "above")),
    ("GEN-CNP's mIC above DGR's", _compare("gencnp", "dgr", "mic", "above", "{:.2f}")),
    ("GEN-CNP's mDC no worse than DGR's", _compare("gencnp", "dgr", "mdc", "at most", "{:.2f}")),
    (
        "GEN-CNP's agreement no worse than DGR's",
        _compare("gencnp", "dgr", "agreement", "at least", "{:.3f}"),
    ),
    (
        "GEN-CNP's class pathways transfer (agreement ≥ 0.9) without forcing their class "
        "on other samples (≤ 0.2)",
        _transfer_holds,
    ),
)


def claims_table(studies: Mapping[str, Mapping[str, Any]], ablations: list[str]) -> list[str]:
    names = [label for _, label in ARCHS if label in studies]
    head = "| claim (GEN-CNP paper) | " + " | ".join(
        f"{name}, {ablation}" for name in names for ablation in ablations
    )
    lines = [head + " |", "|---|" + "---|" * (len(names) * len(ablations))]
    for claim, judge in CLAIMS:
        cells = []
        for name in names:
            for ablation in ablations:
                verdict = judge(studies[name]["interventions"].get(ablation, {}))
                cells.append(
                    "–" if verdict is None else f"{verdict[0]}: **{'yes' if verdict[1] else 'no'}**"
                )
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return lines


def generator_note(results: Mapping[str, Any], ablation: str) -> str:
    """Which GEN-CNP generator the study used under ``ablation``, and how it was trained."""
    config = results["config"]
    directory = (config.get("generators") or {}).get(ablation, config.get("generator"))
    meta_path = ROOT / str(directory) / "meta.json" if directory else None
    if meta_path is None or not meta_path.exists():
        return ""
    meta = json.loads(meta_path.read_text())
    fit = meta.get("fit_config", {})
    trained = (meta.get("ablation") or {}).get("ablation", "zero")
    return (
        f" GEN-CNP: `{directory}`, trained under {trained} ablation ({fit.get('distillation', 'kl')}"
        f" distillation, α = {fit.get('alpha')}, swap weight {fit.get('swap_weight', 0)})."
    )


def target_lines(label: str, results: Mapping[str, Any]) -> list[str]:
    target = results["target"]
    accuracy = target.get("test_accuracy")
    lines = [f"### {label} (test accuracy {100 * accuracy:.2f} %; methods with a sparsity knob "
             f"drop {results['sparsity']:.3f} of the units, GEN-CNP's mean)", ""]  # fmt: skip
    for ablation in results["ablations"]:
        part = results["interventions"][ablation]
        plain = next(iter(part["methods"].values())).get("blank_agreement_plain")
        lines += [
            f"#### {ablation} ablation: instance pathways (plain model on the blank: {plain:.2f})",
            "",
            generator_note(results, ablation).strip(),
            "",
            *table(part["methods"], INSTANCE),
            "",
            f"#### {ablation} ablation: class pathways transferred to unseen test images",
            "",
            *table(part["transfer"], TRANSFER),
            "",
        ]
    return lines


def section(runs: Path) -> str:
    studies = {}
    for arch, label in ARCHS:
        path = runs / "demo" / arch / "results.json"
        if path.exists():
            studies[label] = json.loads(path.read_text())
    if not studies:
        raise SystemExit(f"no demo results under {shown(runs / 'demo')}: run make demo first")
    first = next(iter(studies.values()))
    ablations = list(first["ablations"])
    config = first["config"]
    timing = runs / "demo" / "timing.json"
    took = ""
    if timing.exists():
        record = json.loads(timing.read_text())
        how = "from scratch" if record.get("from_scratch", True) else (
            "resumed: steps whose output existed were skipped, so this is not the from-scratch time"
        )  # fmt: skip
        took = (
            f" The demo run behind these tables took {record['seconds'] / 60:.1f} min ({how}; "
            f"`{shown(timing)}`)."
        )
    lines = [
        SECTION,
        "",
        f"Command: `make demo` (or `python -m neuralpath.demo --runs {shown(runs)}`), then "
        f"`{command_line('demo_study.py')}` (writes this section from "
        f"`{shown(runs)}/demo/*/results.json`). The study runs every method on the first "
        f"{config['limit']} Fashion-MNIST test images under each of: "
        + ", ".join(f"**{a}**" for a in ablations)
        + " ablation (dropped units become 0, or their mean activation over 2000 training "
        "images); class pathways from the first "
        f"{config['transfer_per_class']} correctly predicted training images per class, "
        f"θ = {config['theta']}. Leakage controls (spec §10): *blank agr.* = the pathway model "
        "fed the mean image still predicts the explained class; *swap → mask* = a sample run "
        "through another class's pathway predicts that class; *forced to another class* = a "
        "class pathway applied to a sample of another class predicts its own class. High "
        "values mean the mask, not the input, carries the answer." + took,
        "",
    ]
    for label, results in studies.items():
        lines += target_lines(label, results)
    lines += [
        "### The GEN-CNP paper's claims under each ablation",
        "",
        *claims_table(studies, ablations),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (nothing runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    text = section(args.runs)
    print(text)
    write_section(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
