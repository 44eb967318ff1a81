"""Element pathways of a VGG-16 at 224×224 in bounded memory (``internal_batch_size``).

Critical pathways (NeuronMCT, element granularity, sparsity 0.9) for a batch of torchvision
VGG-16 inputs (random weights: memory and time do not depend on them), once in one call and once
with ``internal_batch_size`` images at a time; peak extra resident memory of each, and whether
the masks are identical. Writes the ``## Element pathways in bounded memory`` section.

    .venv/bin/python benchmarks/memory_element.py [--batch 8] [--chunk 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time, torch, torchvision
torch.manual_seed(0)
from neuralpath import GatedModel, FinderOptions, build_finder
from neuralpath.methods import find_in_chunks
batch, chunk = int(sys.argv[1]), (int(sys.argv[2]) or None)
model = torchvision.models.vgg16(weights=None).eval()
x = torch.randn(batch, 3, 224, 224)
gated = GatedModel.discover(model, x[:1])
finder = build_finder("cp-mct", gated, FinderOptions(sparsity=0.9, granularity="element"))
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
before = rss()
start = time.perf_counter()
pathway = find_in_chunks(finder, x, None, chunk)
seconds = time.perf_counter() - start
peak = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
pathway.save(sys.argv[3])
print(json.dumps({"seconds": seconds, "peak_extra_mib": peak - before,
                  "units": pathway.units_total, "kept": float(pathway.kept_fraction().mean())}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=1)
    args = parser.parse_args()
    import json
    import tempfile

    import torch

    from neuralpath.pathway import Pathway

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, chunk in (("whole batch", 0), (f"internal_batch_size={args.chunk}", args.chunk)):
            out = f"{tmp}/{chunk}.safetensors"
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.batch), str(chunk), out],
                capture_output=True,
                text=True,
                check=True,
            )
            results[label] = json.loads(proc.stdout)
            results[label]["masks"] = Pathway.load(out)
            print(label, {k: v for k, v in results[label].items() if k != "masks"}, flush=True)
    first, second = results.values()
    same = all(torch.equal(first["masks"][n], second["masks"][n]) for n in first["masks"])
    lines = [
        f"Command: `.venv/bin/python benchmarks/memory_element.py --batch {args.batch} --chunk "
        f"{args.chunk}` (CPU; torchvision VGG-16, random weights, 224×224, NeuronMCT element "
        f"pathways at sparsity 0.9, {first['units']:,} units per image; each run in a fresh process; "
        "peak extra memory = resident high-water mark (VmHWM, reset via /proc/self/clear_refs) "
        "minus the resident size before the call).",
        "",
        "| run | seconds | peak extra MiB | kept fraction |",
        "|---|---:|---:|---:|",
    ]
    for label, row in results.items():
        lines.append(
            f"| {label} | {row['seconds']:.1f} | {row['peak_extra_mib']:.0f} | {row['kept']:.4f} |"
        )
    lines += [
        "",
        f"Masks identical between the two runs: {'yes' if same else 'NO'}. Memory grows "
        "with the batch in one call (activations and gradients of every image at once) and "
        "stays at one chunk's worth with `internal_batch_size` (`neuralpath find/extract "
        "--internal-batch-size`).",
    ]
    write_section(
        ROOT / "docs" / "results.md", "## Element pathways in bounded memory\n\n" + "\n".join(lines)
    )


if __name__ == "__main__":
    main()
