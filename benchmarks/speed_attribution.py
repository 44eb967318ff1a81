"""Cost of Pathway Gradient against Captum's Saliency and Integrated Gradients, and of the global
percentile over the 13.6 M element units of a VGG-16 at 224×224.

1. On the VGG-11 Fashion-MNIST target (``runs/vgg11-fmnist``; a same-architecture model with
   random weights when the checkpoint is absent: timing does not depend on the weights), for a
   batch of 64 and of 1 test image (random inputs when the data set is missing), with the target
   class given (the prediction): Captum ``Saliency(abs=False)``, Pathway Gradient with NeuronMCT
   (element units, sparsity 0.9: scoring pass + gradient of the pathway model), and Captum
   ``IntegratedGradients`` (50 steps, ``internal_batch_size`` = batch). The three are timed in
   turn inside each repeat, by wall-clock and by this process's CPU time (one thread: the work
   done, insensitive to other jobs preempting us); the ratios are medians of the per-repeat
   ratios, the times medians over repeats.
2. torchvision VGG-16 (random weights) at 224×224: NeuronMCT element scores of its 13 conv ReLUs
   (13.6 M units per image) for a batch, then :func:`~neuralpath.pathway.global_percentile` at
   sparsity 0.9 on the scores' device (``torch.kthvalue``, no numpy), whole batch at once and with
   ``chunk_size=1``. Peak memory of the percentile step = peak resident set size during the step
   minus the resident size before it: Linux's high-water mark ``VmHWM`` is reset by writing ``5``
   to ``/proc/self/clear_refs`` just before the step and read from ``/proc/self/status`` after
   (CPU; tracemalloc does not see torch's allocations). On CUDA, ``torch.cuda.max_memory_allocated``
   after ``reset_peak_memory_stats``.

Writes the ``## Attribution speed`` section of ``docs/results.md``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_attribution.py
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from captum.attr import IntegratedGradients, Saliency

from neuralpath.attribution import PathwayGradient
from neuralpath.gating import GatedModel, frozen
from neuralpath.methods.critical import NeuronMCT
from neuralpath.pathway import global_percentile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import load_batch, load_model, write_section  # noqa: E402

SECTION = "## Attribution speed"
MAX_PG_OVER_SALIENCY = 3.0
MIN_IG_OVER_PG = 10.0


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_both(fn: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare_methods(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of each method and median per-repeat ratios for one batch."""
    gated = GatedModel.discover(model, images[:1])
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    pathway_gradient = PathwayGradient(gated, NeuronMCT(gated, sparsity=0.9, granularity="element"))
    batch = images.shape[0]

    def saliency() -> object:
        with frozen(model):
            return Saliency(model).attribute(
                images.clone().requires_grad_(True), target=target, abs=False
            )

    def integrated() -> object:
        with frozen(model):
            ig = IntegratedGradients(model)
            x = images.clone().requires_grad_(True)
            return ig.attribute(x, target=target, n_steps=50, internal_batch_size=batch)

    def pathway() -> object:
        return pathway_gradient.attribute(images, target)

    methods = {
        "saliency": saliency,
        "pathway_gradient": pathway,
        "integrated_gradients": integrated,
    }
    for fn in methods.values():  # warm-up
        fn()
    clocks: dict[str, dict[str, list[float]]] = {
        c: {n: [] for n in methods} for c in ("wall", "cpu")
    }
    for _ in range(repeats):
        for name, fn in methods.items():
            wall, cpu = timed_both(fn)
            clocks["wall"][name].append(wall)
            clocks["cpu"][name].append(cpu)
    result = {}
    for clock, times in clocks.items():
        pg, sal, ig = times["pathway_gradient"], times["saliency"], times["integrated_gradients"]
        for name, values in times.items():
            result[f"{name}_{clock}"] = statistics.median(values)
        result[f"pg_over_saliency_{clock}"] = statistics.median(
            p / s for p, s in zip(pg, sal, strict=True)
        )
        result[f"ig_over_pg_{clock}"] = statistics.median(
            i / p for i, p in zip(ig, pg, strict=True)
        )
    return result


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return int(match.group(1))


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """``(seconds, peak extra MiB)`` of ``fn``: RSS high-water mark above the RSS before (CPU),
    or the CUDA allocator's peak above the memory allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(lambda: (fn(), torch.cuda.synchronize(device)))
        return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    seconds = timed(fn)
    return seconds, (_status_kb("VmHWM") - before) / 1024


def percentile_vgg16(batch: int, device: torch.device) -> dict[str, float]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).to(device).eval()
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    gated = GatedModel.discover(model, images[:1])
    units = sum(site.numel for site in gated.sites)
    finder = NeuronMCT(gated, sparsity=0.9, granularity="element")
    start = time.perf_counter()
    scores = finder.scores(images)
    score_seconds = time.perf_counter() - start
    result: dict[str, float] = {
        "batch": batch,
        "sites": len(gated.sites),
        "units_per_image": units,
        "scores_seconds": score_seconds,
        "scores_mib": sum(s.numel() * s.element_size() for s in scores.values()) / 2**20,
    }
    for label, chunk in (("whole", None), ("chunk1", 1)):
        holder: list[object] = []
        seconds, mib = peak_memory_mib(
            lambda chunk=chunk, holder=holder: holder.append(
                global_percentile(scores, 0.9, "element", chunk_size=chunk)
            ),
            device,
        )
        kept = holder[0].kept_fraction()  # type: ignore[attr-defined]
        result[f"{label}_seconds"] = seconds
        result[f"{label}_peak_mib"] = mib
        result[f"{label}_kept"] = float(kept.mean())
        holder.clear()
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (nothing runs)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "vgg11-fmnist")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--vgg16-batch", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="device of the VGG-16 percentile part")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, model_source = load_model(args.checkpoint)
    images, image_source = load_batch(64)
    rows = {}
    for batch in (64, 1):
        rows[batch] = compare_methods(model, images[:batch], args.repeats)
        print(f"batch {batch}: {rows[batch]}", flush=True)
    vgg = percentile_vgg16(args.vgg16_batch, torch.device(args.device))
    print(f"vgg16: {vgg}", flush=True)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_attribution.py"
    if argv:
        command += " " + " ".join(argv)
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (torch {torch.__version__}, CPU, {args.threads} thread(s), "
        f"{args.repeats} repeats after one warm-up; machine shared with other jobs).",
        "",
        f"Pathway Gradient vs Captum on {model_source}, {image_source}, target = prediction. "
        "PG = NeuronMCT element scores (one forward + backward with all-ones element gates) + "
        "the input gradient of the pathway model at sparsity 0.9. IG = 50 steps, "
        "`internal_batch_size` = batch. Times are medians; ratios are medians of per-repeat ratios. "
        "Two clocks read around the same calls: wall-clock, and the CPU time of this process "
        "(`time.process_time`, 1 thread): on this shared 2-core machine other jobs preempt the "
        "benchmark, which inflates wall-clock times at random, while CPU time measures the work "
        "each method does. Pathway Gradient is two gradient passes (≈ 2 Saliency) plus one "
        "`torch.kthvalue` per sample over all units, so ≈ 2× Saliency is its floor; at batch 64 the "
        "selection over 64 × 37,888 units is most of the rest.",
        "",
        "| batch | clock | Saliency ms | Pathway Gradient ms | Integrated Gradients ms "
        "| PG / Saliency (target ≤ 3) | IG / PG (target ≥ 10) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for batch, r in rows.items():
        for clock in ("wall", "cpu"):
            pg_sal, ig_pg = r[f"pg_over_saliency_{clock}"], r[f"ig_over_pg_{clock}"]
            lines.append(
                f"| {batch} | {clock} | {1e3 * r[f'saliency_{clock}']:.1f} | "
                f"{1e3 * r[f'pathway_gradient_{clock}']:.1f} | "
                f"{1e3 * r[f'integrated_gradients_{clock}']:.1f} | "
                f"{pg_sal:.2f} ({verdict(pg_sal <= MAX_PG_OVER_SALIENCY)}) | "
                f"{ig_pg:.1f} ({verdict(ig_pg >= MIN_IG_OVER_PG)}) |"
            )
    lines += [
        "",
        f"Global percentile over a torchvision VGG-16 (random weights) at 224×224 on `{args.device}`: "
        f"{vgg['sites']} gated conv ReLUs, {vgg['units_per_image']:,} element units per image, batch "
        f"{vgg['batch']}, sparsity 0.9, `torch.kthvalue` on the scores' device (no numpy). NeuronMCT "
        f"scores took {vgg['scores_seconds']:.1f} s and hold {vgg['scores_mib']:.0f} MiB. Peak memory "
        "= resident-set high-water mark during the step minus the resident size before it (VmHWM "
        "reset through `/proc/self/clear_refs`; on CUDA, `torch.cuda.max_memory_allocated`); the "
        "boolean masks it returns are included.",
        "",
        "| chunk_size | seconds | peak extra MiB | kept fraction |",
        "|---|---:|---:|---:|",
        f"| None (whole batch) | {vgg['whole_seconds']:.2f} | {vgg['whole_peak_mib']:.0f} | "
        f"{vgg['whole_kept']:.4f} |",
        f"| 1 | {vgg['chunk1_seconds']:.2f} | {vgg['chunk1_peak_mib']:.0f} | {vgg['chunk1_kept']:.4f} |",
        "",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(args.results, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
