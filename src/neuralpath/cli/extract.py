"""``neuralpath extract``: pathways of a whole data split into a sharded, resumable store."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from neuralpath.cli import add_finder_args, finder_config, open_finder, parse_settings, print_json

if TYPE_CHECKING:
    from neuralpath.checkpoint import Target
    from neuralpath.data import ImageDataset
    from neuralpath.methods import PathwayFinder
    from neuralpath.runner import Reference


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``extract`` command."""
    extract = subparsers.add_parser(
        "extract",
        help="extract pathways of a whole split into a sharded store (resumable, torchrun-ready)",
        description="Write the pathway of every sample of a split to STORE (bit-packed "
        "safetensors shards + index.json + per-class statistics), with the leakage controls "
        "under --ablation (index.json 'summary', printed with the store). Re-running resumes; "
        "under torchrun each rank writes its own shards.",
    )
    add_finder_args(extract, "extract the first N samples only")
    extract.add_argument("--shard-size", type=int, default=512, help="samples per shard (512)")
    extract.add_argument("--out", required=True, help="store directory")
    extract.set_defaults(handler=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    import os
    import time

    import torch
    import torch.distributed as dist

    from neuralpath.interventions import check_ablation
    from neuralpath.runner import warn_if_disconnected, warn_if_leaking
    from neuralpath.store import PathwayStore, extract

    finder_config(args)  # settings checked before any process group is set up
    check_ablation(args.ablation)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = args.device
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        device = f"cuda:{local}" if use_cuda else ("cpu" if device == "auto" else device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        target, dataset, finder, reference = _open_finder_rank0_first(args, device, distributed)
        started = time.perf_counter()
        out = extract(
            finder,
            dataset,
            args.out,
            num_classes=target.meta.num_classes,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            limit=args.limit,
            provenance={**_provenance(args, finder, reference), "data_split": dataset.split_info},
            progress=not args.no_progress,
            internal_batch_size=args.internal_batch_size,
            baseline=reference.statistics.input_mean,
            seed=args.seed,
        )
        seconds = time.perf_counter() - started
        if not distributed or dist.get_rank() == 0:
            store = PathwayStore(out)
            warn_if_leaking(store.summary, args.method)
            warn_if_disconnected({**store.summary, "n": len(store)}, args.method)
            print_json(
                {
                    "store": str(out),
                    "method": store.method,
                    "n": len(store),
                    "bytes_per_sample": store.index["bytes_per_sample"],
                    "kept_fraction_mean": float(store.kept_fraction.mean()),
                    **store.summary,
                    "seconds": seconds,
                }
            )
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _open_finder_rank0_first(
    args: argparse.Namespace, device: str, distributed: bool
) -> tuple[Target, ImageDataset, PathwayFinder, Reference]:
    """:func:`open_finder`; under torchrun rank 0 first, so that it alone computes (or, with
    --recompute-reference, recomputes) the reference statistics and every rank loads the same."""
    import torch.distributed as dist

    if not distributed:
        return open_finder(args, device)
    rank = dist.get_rank()
    if rank != 0:
        dist.barrier()
        args.recompute_reference = False
    opened = open_finder(args, device)
    if rank == 0:
        dist.barrier()
    return opened


def _provenance(
    args: argparse.Namespace, finder: PathwayFinder, reference: Reference
) -> dict[str, Any]:
    """What the store was extracted with (a resumed extraction must match it)."""
    import os

    target = (
        {"checkpoint": os.path.abspath(args.checkpoint)}
        if args.checkpoint is not None
        else {"model": args.model, "weights": _absolute(args.weights)}
    )
    return {
        **target,
        "data": args.data,
        "split": args.split,
        "sparsity": finder.sparsity,
        "seed": args.seed,
        "settings": parse_settings(args.settings),
        "generator": os.path.abspath(args.generator) if args.generator else None,
        "reference": reference.statistics.describe(),  # the blank baseline comes from it
    }


def _absolute(weights: str | None) -> str | None:
    """A weights file as an absolute path (a torchvision weights enum name as it is)."""
    import os

    return os.path.abspath(weights) if weights is not None and os.path.exists(weights) else weights
