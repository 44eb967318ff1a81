"""Saliency maps of the vision-transformer target, evaluated like the CNNs' (issue 16).

Runs ``neuralpath evaluate-attribution`` on ``runs/vit-tiny-fmnist`` with heads and MLP neurons
gated (``--units heads,mlp``), under zero and mean ablation: Pathway Gradient and Grad-CAM of
the pathway model with critical pathways (cp-mct, its defaults: element units, sparsity 0.9,
connecting repair) and with GEN-CNP (the token-RFE generators of ``benchmarks/vit_study.py``,
when present), beside the baselines the issue names: plain gradient, integrated gradients
(Captum), attention rollout (Abnar & Zuidema 2020), and the plain model's token Grad-CAM.
Metrics: LeRF/MoRF, deletion/insertion and the cascading-randomisation sanity check. Captum's
methods and rollout do not depend on the ablation; they are run once, under zero ablation.
Writes ``## Vision transformer: saliency maps`` of docs/results.md; the full payloads stay in
``--out``.

    OMP_NUM_THREADS=2 nice .venv/bin/python benchmarks/vit_attribution.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from neuralpath.cli import main as neuralpath
from neuralpath.evaluation import markdown_table

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, command_line, shown, write_section  # noqa: E402

SECTION = "## Vision transformer: saliency maps"
ENV = "OMP_NUM_THREADS=2 nice"
BASELINES = ("gradient", "integrated-gradients", "attention-rollout", "grad-cam")
PATHWAY = ("pathway-gradient", "pathway-grad-cam")


def methods(ablation: str, generator: Path | None) -> list[str]:
    """Method specs of one run: the baselines under zero ablation only."""
    finders = ["cp-mct"] + (["gencnp"] if generator is not None else [])
    chosen = [f"{method}:{finder}" for finder in finders for method in PATHWAY]
    return (list(BASELINES) if ablation == "zero" else []) + chosen


def evaluate(args: argparse.Namespace, ablation: str) -> dict[str, Any]:
    """One ``evaluate-attribution`` run; its payload (``results.json``)."""
    generator = args.generators / f"token-{ablation}"
    present = generator if (generator / "meta.json").exists() else None
    out = args.out / ablation
    command = [
        "evaluate-attribution", "--checkpoint", str(args.checkpoint), "--units", "heads,mlp",
        "--methods", ",".join(methods(ablation, present)), "--ablation", ablation,
        "--metrics", "lerf,morf,deletion,insertion,sanity", "--limit", str(args.limit),
        "--steps", str(args.steps), "--sanity-limit", str(args.sanity_limit),
        "--seed", str(args.seed), "--no-progress", "--out", str(out),
    ]  # fmt: skip
    if present is not None:
        command += ["--generator", str(present)]
    code = neuralpath(command)
    if code != 0:
        raise SystemExit(f"evaluate-attribution failed under {ablation} ablation (exit {code})")
    payload: dict[str, Any] = json.loads((out / "results.json").read_text())
    payload["generator"] = None if present is None else shown(present)
    return payload


def _at(curve: dict[str, Any], q: float) -> float:
    """A LeRF/MoRF curve's value at ``q`` % of the pixels removed."""
    fractions = [float(f) for f in curve["fractions"]]
    return float(
        curve["curve"][min(range(len(fractions)), key=lambda i: abs(fractions[i] - q / 100))]
    )


def reading(payloads: dict[str, dict[str, Any]]) -> list[str]:
    """Generated from the tables: orderings at 10 % and the methods the sanity check catches."""
    rows = {
        f"{method} ({ablation})" if ablation != "zero" else method: row
        for ablation, payload in payloads.items()
        for method, row in payload["results"].items()
    }
    lerf = sorted(rows, key=lambda m: _at(rows[m]["lerf"], 10.0))
    morf = sorted(rows, key=lambda m: -_at(rows[m]["morf"], 10.0))
    blind = [m for m, row in rows.items() if row["sanity"]["similarity"]["ssim"][0] >= 0.99]
    return [
        "**Reading** (generated from the tables):",
        f"- LeRF at 10 % (best first): {', '.join(lerf)}.",
        f"- MoRF at 10 % (best first): {', '.join(morf)}.",
        "- Unchanged when the classifier head is randomised (SSIM last layer ≥ 0.99, failing "
        f"that sanity check): {', '.join(blind) or 'none'}"
        + (
            " (attention rollout reads only the attention weights, never the head, so it "
            "cannot depend on the explained class)."
            if any(m.startswith("attention-rollout") for m in blind)
            else "."
        ),
        "",
    ]


def render(payloads: dict[str, dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}` ({args.minutes:.1f} min on the shared 2-core CPU).",
        "",
        f"Target `{shown(args.checkpoint)}` with heads and MLP neurons gated (`--units "
        f"heads,mlp`); the first {args.limit} Fashion-MNIST test images, maps of the predicted "
        "class. LeRF (↓) / MoRF (↑): |p − p′| / p after removing the q % least / most relevant "
        f"pixels; deletion (↓) / insertion (↑): area under the curve in {args.steps} steps; "
        f"sanity: similarity to the trained model's map after randomising the last layer and "
        f"all layers ({args.sanity_limit} images; lower = the map depends on the weights). "
        "Pathway methods use each finder's defaults (cp-mct: element units at sparsity 0.9 with "
        "the connecting repair; GEN-CNP: its own per-sample masks) under the ablation named; "
        "gradient, integrated gradients (Captum), attention rollout and the plain model's token "
        "Grad-CAM do not depend on it and are run once. Each table is the `results.md` "
        "`evaluate-attribution` writes.",
        "",
    ]
    for ablation, payload in payloads.items():
        generator = payload["generator"] or "none (run benchmarks/vit_study.py first)"
        lines += [f"### {ablation} ablation (GEN-CNP generator: {generator})", ""]
        lines += [markdown_table(payload).rstrip(), ""]
        zero = {m: row.get("zero_maps", 0) for m, row in payload["results"].items()}
        listed = ", ".join(f"{m} {n} / {args.limit}" for m, n in zero.items() if n) or "none"
        lines += [f"All-zero maps (their pixel ranking is ties only): {listed}.", ""]
    lines += reading(payloads)
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "vit-tiny-fmnist")
    parser.add_argument(
        "--generators", type=Path, default=ROOT / "runs" / "vit-study" / "generators",
        help="folder of vit_study.py's generators (token-zero, token-mean)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "vit-study" / "attribution")
    parser.add_argument("--limit", type=int, default=200, help="test images (200)")
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps (20)")
    parser.add_argument("--sanity-limit", type=int, default=20, help="sanity images (20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablations", default="zero,mean")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    payloads = {ablation: evaluate(args, ablation) for ablation in args.ablations.split(",")}
    args.minutes = (time.perf_counter() - start) / 60
    section = render(payloads, args, command_line(__file__, argv, ENV))
    write_section(args.doc, section)
    print(section)
    print(f"wrote {shown(args.doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
