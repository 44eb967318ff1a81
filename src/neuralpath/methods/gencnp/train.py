"""Fit a GEN-CNP generator to a frozen target: knowledge distillation + l2 sparsity (spec §6).

Per batch ``x``: a clean forward of the target records ``F_l`` (detached) and the teacher
logits ``H(x)``; the generator predicts scores ``s_l`` and DAQ masks ``m_l``; the target runs
again with the masks applied, ``H_P(x)``; the loss is

    L = T² · KL(softmax(H(x)/T) ‖ softmax(H_P(x)/T)) + α · Σ_l ‖s_l‖²₂ / Σ_l C_l

(batch mean), minimised with Adam over the generator's parameters only. The target stays in
eval mode with parameter gradients off (:meth:`GatedModel.gate` freezes and restores it).

Runs in one process, or in several under ``torchrun`` (PyTorch DDP; ``torch.distributed`` is
initialised from the torchrun environment variables, gloo on CPU, nccl on CUDA). Batches come
from a :class:`~torch.utils.data.DistributedSampler` with a seeded shuffle set per epoch, so
``W`` processes with ``batch_size / W`` samples each see the same global batches as one process
(exactly when the training set size is a multiple of ``batch_size``; the last incomplete batch is
dropped). Rank 0 writes a checkpoint after every epoch; ``resume=True`` continues from it and
gives the same generator as an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from neuralpath.errors import CheckpointError, InputError
from neuralpath.gating import GatedModel
from neuralpath.io import load_tensors
from neuralpath.methods.gencnp.checkpoint import (
    GENERATOR_FILE,
    META_FILE,
    check_identity,
    load_train_state,
    read_meta,
    save_checkpoint,
    target_identity,
)
from neuralpath.methods.gencnp.generator import GeneratorConfig, GeneratorOutput, PathwayGenerator

Schedule = Literal["cosine", "constant"]


@dataclass(frozen=True)
class FitConfig:
    """Training hyper-parameters [ours unless stated].

    ``alpha``: weight of the l2 sparsity term (>= 0); ``temperature``: KD temperature T;
    ``batch_size``: the *global* batch (split evenly over DDP processes); ``val_fraction``: share
    of ``dataset`` held out (seeded) for the per-epoch validation; ``schedule``: ``"cosine"``
    (learning rate annealed to 0 over all steps, so scores near the 0.5 threshold settle by the
    end) or ``"constant"``; ``generator``: architecture.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    alpha: float = 0.3
    temperature: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    schedule: Schedule = "cosine"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not (
            isinstance(self.alpha, int | float) and math.isfinite(self.alpha) and self.alpha >= 0
        ):
            raise InputError(
                f"alpha (sparsity weight) must be a finite number >= 0, got {self.alpha!r}"
            )
        if not self.temperature > 0:
            raise InputError(f"temperature must be positive, got {self.temperature!r}")
        if not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr!r}")
        if self.schedule not in ("cosine", "constant"):
            raise InputError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["generator"] = self.generator.to_dict()
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        values["generator"] = GeneratorConfig.from_dict(payload.get("generator", {}))
        return cls(**values)


def distillation_loss(
    teacher: Tensor, student: Tensor, output: GeneratorOutput, alpha: float, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, kd, sparsity)`` batch means; ``teacher``/``student``: logits ``[B, K]``."""
    log_p = F.log_softmax(teacher / temperature, dim=1)
    log_q = F.log_softmax(student / temperature, dim=1)
    kd = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    sparsity = output.sparsity_penalty().mean()
    return kd + alpha * sparsity, kd, sparsity


def generator_step(
    gated: GatedModel, generator: torch.nn.Module, images: Tensor
) -> tuple[Tensor, Tensor, GeneratorOutput]:
    """Clean forward (recorded, no grad) -> generator -> pathway forward.

    Returns ``(teacher logits, pathway logits, generator output)``; the pathway logits are
    differentiable with respect to the generator's parameters.
    """
    with torch.no_grad():
        teacher, recording = gated.record(images)
        features = {name: a.detach() for name, a in recording.activations.items()}
    output: GeneratorOutput = generator(features)
    with gated.gate(output.masks):
        student = gated.model(images)
    return teacher, student, output


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), if not joined yet."""
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return _Dist()
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), owns_group=True)


def _resolve_device(gated: GatedModel, device: str | torch.device | None) -> torch.device:
    if device is None:
        device = gated.device
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None and "LOCAL_RANK" in os.environ:
        resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return resolved


def split_train_val(
    dataset: Dataset, val_fraction: float, seed: int
) -> tuple[Dataset, Dataset | None]:
    """Seeded hold-out of ``round(val_fraction * N)`` samples for validation."""
    n = len(dataset)  # type: ignore[arg-type]
    n_val = round(val_fraction * n)
    if n_val == 0:
        return dataset, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())


@torch.no_grad()
def evaluate_generator(
    gated: GatedModel,
    generator: PathwayGenerator,
    dataset: Dataset,
    config: FitConfig,
    env: _Dist,
    device: torch.device,
) -> dict[str, float]:
    """Validation loss, KD term, agreement and kept fraction (mean over ``dataset``).

    Each process evaluates its shard; the sums are all-reduced.
    """
    generator.eval()
    n = len(dataset)  # type: ignore[arg-type]
    shard = Subset(dataset, list(range(env.rank, n, env.world)))
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    for images, _ in DataLoader(shard, batch_size=max(1, config.batch_size), shuffle=False):
        images = images.to(device)
        teacher, student, output = generator_step(gated, generator, images)
        loss, kd, _ = distillation_loss(teacher, student, output, config.alpha, config.temperature)
        b = images.shape[0]
        sums += torch.stack(
            [
                loss.double() * b,
                kd.double() * b,
                (student.argmax(1) == teacher.argmax(1)).double().sum(),
                output.kept_fraction().double().sum(),
                torch.tensor(float(b), device=device).double(),
            ]
        )
    if env.world > 1:
        dist.all_reduce(sums)
    count = sums[4].clamp_min(1)
    generator.train()
    return {
        "val_loss": float(sums[0] / count),
        "val_kd": float(sums[1] / count),
        "val_agreement": float(sums[2] / count),
        "val_kept_fraction": float(sums[3] / count),
    }


def fit_gencnp(
    target: GatedModel | str | os.PathLike[str],
    dataset: Dataset,
    config: FitConfig | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    data_name: str | None = None,
    target_meta: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
) -> PathwayGenerator:
    """Train a GEN-CNP generator for ``target`` on ``dataset`` (items ``(image, label)``).

    ``target``: a :class:`GatedModel`, or a target checkpoint directory (its default gate sites
    are used). With ``out_dir`` a checkpoint is written after every epoch (rank 0) and
    ``resume=True`` continues from it (an existing checkpoint without ``resume`` is an error).
    ``stop_after``: end this session after that epoch (the learning-rate schedule still spans
    ``config.epochs``; continue later with ``resume=True``), e.g. for time-limited jobs.
    ``target_meta`` (the target checkpoint's ``meta.json``) and ``data_name`` are recorded in
    the generator's ``meta.json``. Returns the trained generator in eval mode, on the target's
    device; its per-epoch history is ``generator.fit_history``.
    """
    config = config or FitConfig()
    if not isinstance(target, GatedModel):
        from neuralpath.runner import open_target

        loaded, target = open_target(str(target), device if device is not None else "auto")
        target_meta = loaded.meta.to_dict()
        data_name = data_name or loaded.meta.data
    gated: GatedModel = target
    run_device = _resolve_device(gated, device)
    if run_device != gated.device:
        raise InputError(f"the target is on {gated.device}; move it to {run_device} first")
    if any(len(site.shape) == 0 for site in gated.sites):
        raise InputError("every gate site needs a [C, ...] output")
    env = _init_distributed(run_device)
    try:
        return _fit(
            gated,
            dataset,
            config,
            out_dir,
            resume,
            run_device,
            progress,
            env,
            target_meta,
            data_name,
            stop_after,
        )
    finally:
        if env.owns_group:
            dist.destroy_process_group()


def _fit(
    gated: GatedModel,
    dataset: Dataset,
    config: FitConfig,
    out_dir: str | os.PathLike[str] | None,
    resume: bool,
    device: torch.device,
    progress: bool,
    env: _Dist,
    target_meta: Mapping[str, Any] | None,
    data_name: str | None,
    stop_after: int | None,
) -> PathwayGenerator:
    if config.batch_size % env.world:
        raise InputError(
            f"batch_size {config.batch_size} must be divisible by the {env.world} processes"
        )
    train_set, val_set = split_train_val(dataset, config.val_fraction, config.seed)
    n_train = len(train_set)  # type: ignore[arg-type]
    if n_train < config.batch_size:
        raise InputError(
            f"{n_train} training samples are fewer than one batch of {config.batch_size}"
        )
    torch.manual_seed(config.seed)
    generator = PathwayGenerator(gated.sites, config.generator).to(device).train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr)
    identity = target_identity(gated, target_meta)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    directory = Path(out_dir) if out_dir is not None else None
    if directory is not None and (directory / META_FILE).exists():
        if not resume:
            raise CheckpointError(
                f"{directory} already holds a generator; pass resume to continue it"
            )
        start_epoch, history = _restore(directory, generator, optimizer, config, gated)
    model: torch.nn.Module = generator
    if env.world > 1:
        model = DistributedDataParallel(
            generator, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = DistributedSampler(
        train_set, num_replicas=env.world, rank=env.rank, shuffle=True, seed=config.seed
    )
    loader = DataLoader(
        train_set, batch_size=config.batch_size // env.world, sampler=sampler, drop_last=True
    )
    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    for epoch in range(start_epoch, last_epoch + 1):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        bar = tqdm(
            loader,
            desc=f"gencnp epoch {epoch}/{config.epochs}",
            leave=False,
            disable=not (progress and env.main),
        )
        for step, (images, _) in enumerate(bar):
            if config.schedule == "cosine":
                done = ((epoch - 1) * len(loader) + step) / (config.epochs * len(loader))
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * config.lr * (1.0 + math.cos(math.pi * done))
            images = images.to(device)
            teacher, student, output = generator_step(gated, model, images)
            loss, _, _ = distillation_loss(
                teacher, student, output, config.alpha, config.temperature
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack(
                [
                    loss.detach().double(),
                    (student.detach().argmax(1) == teacher.argmax(1)).double().mean(),
                    output.kept_fraction().double().mean(),
                    torch.ones((), dtype=torch.float64, device=device),
                ]
            )
            if progress and env.main and (step % 10 == 0):
                n = float(sums[3])
                bar.set_postfix(
                    loss=f"{sums[0] / n:.4f}", agree=f"{sums[1] / n:.3f}", kept=f"{sums[2] / n:.3f}"
                )
        if env.world > 1:
            dist.all_reduce(sums)
        steps = float(sums[3].clamp_min(1))
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(sums[0]) / steps,
            "train_agreement": float(sums[1]) / steps,
            "train_kept_fraction": float(sums[2]) / steps,
        }
        if val_set is not None:
            record.update(evaluate_generator(gated, generator, val_set, config, env, device))
        record["seconds"] = round(time.perf_counter() - started, 2)
        history.append(record)
        if progress and env.main:
            tqdm.write(
                "gencnp "
                + ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in record.items()
                )
            )
        if directory is not None and env.main:
            meta = {
                "generator_config": config.generator.to_dict(),
                "fit_config": config.to_dict(),
                "target": identity,
                "data": {"name": data_name, "samples": len(dataset)},  # type: ignore[arg-type]
                "epochs_done": epoch,
                "world_size": env.world,
                "history": history,
            }
            save_checkpoint(directory, generator, meta, optimizer)
        if env.world > 1:
            dist.barrier()
    generator.fit_history = history
    return generator.eval()


def _restore(
    directory: Path,
    generator: PathwayGenerator,
    optimizer: torch.optim.Optimizer,
    config: FitConfig,
    gated: GatedModel,
) -> tuple[int, list[dict[str, Any]]]:
    """Load weights, Adam and RNG state; check the checkpoint fits ``config`` and ``gated``."""
    meta = read_meta(directory)
    check_identity(meta["target"], gated, str(directory))
    saved = dict(meta.get("fit_config", {}))
    mine = config.to_dict()
    extendable = ("epochs",) if config.schedule == "constant" else ()  # cosine: fixed horizon
    differ = [k for k in mine if k not in extendable and saved.get(k) != mine[k]]
    if differ:
        raise CheckpointError(
            f"{directory}: cannot resume with a different configuration: "
            + ", ".join(f"{k} {saved.get(k)!r} -> {mine[k]!r}" for k in differ)
        )
    state, _ = load_tensors(directory / GENERATOR_FILE)
    generator.load_state_dict(state)
    load_train_state(directory, optimizer)
    done = int(meta["epochs_done"])
    return done + 1, list(meta.get("history", []))
