"""``neuralpath extract``: pathways of a whole data split into a sharded, resumable store."""

from __future__ import annotations

import argparse

from neuralpath.cli import add_device_arg, add_seed_arg, print_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``extract`` command."""
    extract = subparsers.add_parser(
        "extract",
        help="extract pathways of a whole split into a sharded store (resumable, torchrun-ready)",
        description="Write the pathway of every sample of a split to STORE (bit-packed "
        "safetensors shards + index.json + per-class statistics). Re-running resumes; under "
        "torchrun each rank writes its own shards.",
    )
    extract.add_argument("--checkpoint", required=True, help="target checkpoint directory")
    extract.add_argument("--method", required=True, help="any method of `neuralpath find`")
    extract.add_argument("--generator", help="GEN-CNP generator directory (method gencnp)")
    extract.add_argument("--sparsity", type=float, default=0.9,
                         help="fraction of units dropped, for methods with a sparsity knob (0.9)")
    extract.add_argument("--granularity", choices=("channel", "element"), default="channel")
    extract.add_argument("--data", default="fashion-mnist", help="data set name or image folder")
    extract.add_argument("--data-root", help="folder holding a user copy of the data set")
    extract.add_argument("--split", choices=("train", "test"), default="test")
    extract.add_argument("--limit", type=int, help="extract the first N samples only")
    extract.add_argument("--shard-size", type=int, default=512, help="samples per shard (512)")
    extract.add_argument("--batch-size", type=int, default=64)
    extract.add_argument("--out", required=True, help="store directory")
    extract.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    extract.add_argument("--internal-batch-size", type=int,
                        help="find pathways for at most this many images at a time (bounds memory)")
    add_seed_arg(extract)
    add_device_arg(extract)
    extract.set_defaults(handler=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    import os
    import time

    import torch
    import torch.distributed as dist

    from neuralpath.data import load_dataset
    from neuralpath.methods import FinderOptions, build_finder
    from neuralpath.pathway import check_sparsity
    from neuralpath.runner import open_target
    from neuralpath.store import PathwayStore, extract

    check_sparsity(args.sparsity)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = args.device
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        device = f"cuda:{local}" if use_cuda else ("cpu" if device == "auto" else device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        torch.manual_seed(args.seed)
        target, gated = open_target(args.checkpoint, device)
        dataset = load_dataset(args.data, args.split, args.data_root,
                               image_size=target.meta.input_shape[-1])
        options = FinderOptions(args.sparsity, args.granularity, args.generator, args.seed)
        finder = build_finder(args.method, gated, options)
        provenance = {"checkpoint": os.path.abspath(args.checkpoint), "data": args.data,
                      "split": args.split, "sparsity": args.sparsity, "seed": args.seed,
                      "generator": os.path.abspath(args.generator) if args.generator else None}
        started = time.perf_counter()
        out = extract(finder, dataset, args.out, num_classes=target.meta.num_classes,
                      shard_size=args.shard_size, batch_size=args.batch_size, limit=args.limit,
                      provenance=provenance, progress=not args.no_progress,
                      internal_batch_size=args.internal_batch_size)
        seconds = time.perf_counter() - started
        if not distributed or dist.get_rank() == 0:
            store = PathwayStore(out)
            print_json({"store": str(out), "method": store.method, "n": len(store),
                        "bytes_per_sample": store.index["bytes_per_sample"],
                        "kept_fraction_mean": float(store.kept_fraction.mean()),
                        "seconds": seconds})
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0
