"""Fit a GEN-CNP generator to a frozen target: knowledge distillation + l2 sparsity (spec §6).

Per batch ``x``: a clean forward of the target records ``F_l`` (detached) and the teacher
logits ``H(x)`` with predicted classes ``ĉ``; the generator predicts scores ``s_l`` and DAQ masks
``m_l``; the target runs again with the masks applied, ``H_P(x)``; the loss (batch means) is

    L = D(H(x), H_P(x)) + α · Σ_l ‖s_l‖²₂ / Σ_l C_l
        + W_swap · mean_{(i, j)} ℓ(H_{P_j}(x_i), ĉ_j) + W_blank · mean_i ℓ(H_{P_i}(b), ĉ_i)

* ``D``: ``T² · KL(softmax(H(x)/T) ‖ softmax(H_P(x)/T))`` (``distillation="kl"``, spec §6) or
  the cross-entropy of ``H_P(x)`` to ``ĉ`` (``"ce"``, the form DGR uses) [ours];
* the swap and blank terms [ours] penalise a pathway for predicting its class from the mask
  alone (the leakage controls of spec §10 turned into losses): sample ``i`` runs through the
  masks of a partner ``j`` of another teacher class (:func:`~neuralpath.metrics.leakage.
  swap_partners`, a fresh seeded draw per step), and the baseline input ``b`` (default zeros, the
  data-set mean in normalised space) runs through each sample's own masks;
  ``ℓ(z, c) = −log(1 − softmax(z)_c)`` (:func:`follow_penalty`).

Every masked forward runs under the gated model's intervention (``gated.intervention``, spec
§10: ``m ⊙ a + (1 − m) ⊙ r``, zero by default; train under mean ablation with
``gated.with_intervention(MeanAblation(statistics))``), recorded in the checkpoint. Adam over the
generator's parameters only; the target stays in eval mode with parameter gradients off
(:meth:`GatedModel.gate` freezes and restores it).

Runs in one process, or in several under ``torchrun`` (PyTorch DDP; ``torch.distributed`` is
initialised from the torchrun environment variables, gloo on CPU, nccl on CUDA). Batches come
from a :class:`~torch.utils.data.DistributedSampler` with a seeded shuffle set per epoch, so
``W`` processes with ``batch_size / W`` samples each see the same global batches as one process
(exactly when the training set size is a multiple of ``batch_size``; the last incomplete batch is
dropped; swap partners are drawn within each process's share of the batch). Rank 0 writes a
checkpoint after every epoch; ``resume=True`` continues from it and gives the same generator as
an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from neuralpath.checkpoint import load_target
from neuralpath.data import LabeledDataset
from neuralpath.errors import CheckpointError, InputError, check_non_negative
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
    training_ablation,
)
from neuralpath.methods.gencnp.generator import GeneratorConfig, GeneratorOutput, PathwayGenerator
from neuralpath.metrics.leakage import baseline_batch, swap_partners

Schedule = Literal["cosine", "constant"]
Distillation = Literal["kl", "ce"]
_WEIGHTS = {
    "alpha": "alpha (sparsity weight)",
    "swap_weight": "swap_weight (swap penalty weight)",
    "blank_weight": "blank_weight (blank penalty weight)",
}


@dataclass(frozen=True)
class FitConfig:
    """Training hyper-parameters [ours unless stated].

    ``alpha``: weight of the l2 sparsity term (>= 0); ``temperature``: KD temperature T;
    ``batch_size``: the *global* batch (split evenly over DDP processes); ``val_fraction``: share
    of ``dataset`` held out (seeded) for the per-epoch validation; ``schedule``: ``"cosine"``
    (learning rate annealed to 0 over all steps, so scores near the 0.5 threshold settle by the
    end) or ``"constant"``; ``generator``: architecture.

    Knobs that keep the pathways input-dependent [ours] (module docstring):
    ``distillation``: ``"kl"`` (the paper's KD) or ``"ce"`` (cross-entropy to the teacher's
    class; needs ``temperature`` 1); ``swap_weight``/``blank_weight`` (>= 0): weights of the swap
    and blank penalties (0: not computed).
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    alpha: float = 0.3
    temperature: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    schedule: Schedule = "cosine"
    distillation: Distillation = "kl"
    swap_weight: float = 0.0
    blank_weight: float = 0.0
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        for name, label in _WEIGHTS.items():
            check_non_negative(getattr(self, name), label)
        if not self.temperature > 0:
            raise InputError(f"temperature must be positive, got {self.temperature!r}")
        if self.distillation not in ("kl", "ce"):
            raise InputError(f"distillation must be 'kl' or 'ce', got {self.distillation!r}")
        if self.distillation == "ce" and self.temperature != 1:
            raise InputError("distillation 'ce' uses no temperature; leave temperature at 1")
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
        """The config of ``payload``; keys it lacks (older checkpoints) take their defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        values["generator"] = GeneratorConfig.from_dict(payload.get("generator", {}))
        return cls(**values)


def distillation_term(
    teacher: Tensor, student: Tensor, kind: Distillation = "kl", temperature: float = 1.0
) -> Tensor:
    """Per-sample distillation loss ``[B]`` of pathway logits ``student`` to ``teacher``
    (both ``[B, K]``): ``"kl"``: ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``;
    ``"ce"``: cross-entropy of ``student`` to ``argmax teacher``."""
    if kind == "ce":
        return F.cross_entropy(student, teacher.argmax(dim=1), reduction="none")
    log_p = F.log_softmax(teacher / temperature, dim=1)
    log_q = F.log_softmax(student / temperature, dim=1)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum(dim=1)


def follow_penalty(logits: Tensor, classes: Tensor) -> Tensor:
    """``−log(1 − softmax(logits)_c)`` per row ``[N]`` for ``logits`` ``[N, K]`` and classes
    ``c`` ``[N]`` [ours].

    About ``p = softmax_c`` while ``p`` is small, but its gradient with respect to the class logit
    is ``p`` itself, where ``p``'s own gradient ``p(1 − p)`` vanishes exactly when the mask alone
    makes the pathway model sure of ``c`` (the case to penalise). Computed stably as
    ``logsumexp(z) − logsumexp(z without z_c)``.
    """
    others = logits.scatter(1, classes.view(-1, 1), float("-inf"))
    return logits.logsumexp(dim=1) - others.logsumexp(dim=1)


@dataclass(frozen=True)
class LeakTerm:
    """A leakage control run as a loss: ``penalty`` ``[N]`` (:func:`follow_penalty`,
    differentiable with respect to the masks) and ``follows`` ``[N]`` bool (the pathway model
    predicts the class it should not) for the ``N`` rows it covers."""

    penalty: Tensor
    follows: Tensor

    def mean(self) -> Tensor:
        """Mean penalty (0 when no row is covered)."""
        return self.penalty.mean() if self.penalty.numel() else self.penalty.sum()


def _leak_term(
    gated: GatedModel, inputs: Tensor, masks: Mapping[str, Tensor], classes: Tensor
) -> LeakTerm:
    with gated.gate(masks):
        logits = gated.model(inputs)
    return LeakTerm(follow_penalty(logits, classes), logits.detach().argmax(dim=1) == classes)


def swap_term(
    gated: GatedModel, images: Tensor, masks: Mapping[str, Tensor], classes: Tensor, seed: int
) -> LeakTerm:
    """Each ``x_i`` of ``images`` ``[B, ...]`` through the masks ``{site: [B, C_l]}`` of its swap
    partner ``j`` (:func:`~neuralpath.metrics.leakage.swap_partners` of ``classes`` ``[B]``,
    drawn with ``seed``), under ``gated``'s intervention; penalised for predicting ``c_j``. Rows
    without a partner of another class are left out."""
    partner, valid = swap_partners(classes, seed)
    if not bool(valid.any()):
        empty = images.new_zeros(0)
        return LeakTerm(empty, empty.bool())
    rows = valid.nonzero().squeeze(1).to(images.device)
    cols = partner.to(images.device)[rows]
    return _leak_term(gated, images[rows], {n: m[cols] for n, m in masks.items()}, classes[cols])


def blank_term(
    gated: GatedModel, baseline: Tensor | None, masks: Mapping[str, Tensor], classes: Tensor
) -> LeakTerm:
    """The ``baseline`` input ``[*input_shape]`` (None: zeros) through every sample's own masks
    ``{site: [B, C_l]}`` under ``gated``'s intervention; penalised for predicting ``classes``."""
    inputs = baseline_batch(gated, baseline, classes.numel())
    return _leak_term(gated, inputs, masks, classes)


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


@dataclass(frozen=True)
class StepLoss:
    """The objective on one batch: ``total`` (scalar, differentiable with respect to the
    generator), the batch means ``kd`` and ``sparsity``, the ``teacher`` and pathway
    (``student``) logits ``[B, K]``, the generator ``output``, and the swap and blank terms
    (None when not run)."""

    total: Tensor
    kd: Tensor
    sparsity: Tensor
    teacher: Tensor
    student: Tensor
    output: GeneratorOutput
    swap: LeakTerm | None = None
    blank: LeakTerm | None = None


def step_loss(
    gated: GatedModel,
    generator: torch.nn.Module,
    images: Tensor,
    config: FitConfig,
    *,
    baseline: Tensor | None = None,
    seed: int = 0,
    controls: bool = False,
) -> StepLoss:
    """The objective (module docstring) on ``images`` ``[B, ...]``, masks applied under
    ``gated``'s intervention. The swap (partners drawn with ``seed``) and blank terms run when
    their weight is positive, or always with ``controls`` (validation)."""
    teacher, student, output = generator_step(gated, generator, images)
    kd = distillation_term(teacher, student, config.distillation, config.temperature).mean()
    sparsity = output.sparsity_penalty().mean()
    total = kd + config.alpha * sparsity
    classes = teacher.argmax(dim=1)
    swap = blank = None
    if controls or config.swap_weight > 0:
        swap = swap_term(gated, images, output.masks, classes, seed)
        if config.swap_weight > 0:
            total = total + config.swap_weight * swap.mean()
    if controls or config.blank_weight > 0:
        blank = blank_term(gated, baseline, output.masks, classes)
        if config.blank_weight > 0:
            total = total + config.blank_weight * blank.mean()
    return StepLoss(total, kd, sparsity, teacher, student, output, swap, blank)


@dataclass
class DistEnv:
    """This process's place in the torchrun process group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> DistEnv:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), if not joined yet."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistEnv()
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), owns_group=True)


@contextmanager
def distributed(device: str | torch.device) -> Iterator[DistEnv]:
    """The process group torchrun describes, joined inside the block (left on exit if joined
    here); yields this process's ``rank``/``world`` (0/1 without torchrun). :func:`fit_gencnp`
    inside the block uses the same group."""
    env = _init_distributed(torch.device(device))
    try:
        yield env
    finally:
        if env.owns_group:
            dist.destroy_process_group()


@contextmanager
def main_process_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the block first; the other ranks wait at a barrier, then run it (e.g. rank 0
    computes and stores reference statistics, the others load them)."""
    if env.world > 1 and not env.main:
        dist.barrier()
    yield
    if env.world > 1 and env.main:
        dist.barrier()


def _resolve_device(gated: GatedModel, device: str | torch.device | None) -> torch.device:
    if device is None:
        device = gated.device
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None and "LOCAL_RANK" in os.environ:
        resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return resolved


def split_train_val(
    dataset: LabeledDataset, val_fraction: float, seed: int
) -> tuple[LabeledDataset, LabeledDataset | None]:
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
    dataset: LabeledDataset,
    config: FitConfig,
    env: DistEnv,
    device: torch.device,
    baseline: Tensor | None = None,
) -> dict[str, float]:
    """Validation loss, distillation term, agreement, kept fraction and the leakage controls
    (blank agreement, swap follows-mask; partners drawn with ``config.seed``) over ``dataset``.

    Each process evaluates its shard; the sums are all-reduced.
    """
    generator.eval()
    n = len(dataset)  # type: ignore[arg-type]
    shard = Subset(dataset, list(range(env.rank, n, env.world)))
    sums = torch.zeros(8, dtype=torch.float64, device=device)
    for images, _ in DataLoader(shard, batch_size=max(1, config.batch_size), shuffle=False):
        images = images.to(device)
        step = step_loss(
            gated, generator, images, config, baseline=baseline, seed=config.seed, controls=True
        )
        assert step.swap is not None and step.blank is not None  # controls=True runs both
        parts = [
            step.total * images.shape[0],
            step.kd * images.shape[0],
            (step.student.argmax(1) == step.teacher.argmax(1)).sum(),
            step.output.kept_fraction().sum(),
            torch.tensor(images.shape[0]),
            step.blank.follows.sum(),
            step.swap.follows.sum(),
            torch.tensor(step.swap.follows.numel()),
        ]
        sums += torch.stack([p.to(device=device, dtype=torch.float64) for p in parts])
    if env.world > 1:
        dist.all_reduce(sums)
    generator.train()
    count = sums[4].clamp_min(1)
    result = {
        "val_loss": float(sums[0] / count),
        "val_kd": float(sums[1] / count),
        "val_agreement": float(sums[2] / count),
        "val_kept_fraction": float(sums[3] / count),
        "val_blank_agreement": float(sums[5] / count),
    }
    if sums[7] > 0:
        result["val_swap_follows_mask"] = float(sums[6] / sums[7])
    return result


def fit_gencnp(  # noqa: PLR0913 -- public API; keyword-only job options
    target: GatedModel | str | os.PathLike[str],
    dataset: LabeledDataset,
    config: FitConfig | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    data_name: str | None = None,
    target_meta: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
    baseline: Tensor | None = None,
) -> PathwayGenerator:
    """Train a GEN-CNP generator for ``target`` on ``dataset`` (items ``(image, label)``).

    ``target``: a :class:`GatedModel` (the masks are trained under its ``intervention``), or a
    target checkpoint directory (default gate sites, zero ablation). With ``out_dir`` a
    checkpoint is written after every epoch (rank 0); ``resume=True`` continues it (same config
    and intervention; an existing checkpoint without ``resume`` is an error). ``stop_after``: end
    this session after that epoch (the schedule still spans ``config.epochs``). ``baseline``: the
    blank input ``[*input_shape]`` of the blank term and the validation's blank agreement (None:
    zeros). ``target_meta`` (the target's ``meta.json``) and ``data_name`` are recorded in the
    generator's ``meta.json``. Returns the generator in eval mode on the target's device; its
    per-epoch history is ``generator.fit_history``.
    """
    config = config or FitConfig()
    if not isinstance(target, GatedModel):
        loaded = load_target(str(target), device if device is not None else "auto")
        target = GatedModel.discover(loaded.model, loaded.example_input())
        target_meta = loaded.meta.to_dict()
        data_name = data_name or loaded.meta.data
    gated: GatedModel = target
    run_device = _resolve_device(gated, device)
    if run_device != gated.device:
        raise InputError(f"the target is on {gated.device}; move it to {run_device} first")
    if any(len(site.shape) == 0 for site in gated.sites):
        raise InputError("every gate site needs a [C, ...] output")
    fixed_meta = _fixed_meta(gated, config, target_meta, data_name, dataset, baseline)
    own_rng = [run_device.index or 0] if run_device.type == "cuda" else []
    with distributed(run_device) as env, torch.random.fork_rng(devices=own_rng):
        # The fit's own stream (generator init, PDN dropout; a resume restores it), seeded here
        # and dropped on exit, so the caller's global RNG is left where it was.
        torch.manual_seed(config.seed)
        job = _Job(
            Path(out_dir) if out_dir is not None else None,
            resume,
            run_device,
            progress and env.main,
            env,
            fixed_meta,
            stop_after,
            baseline,
        )
        return _fit(gated, dataset, config, job)


def _fixed_meta(
    gated: GatedModel,
    config: FitConfig,
    target_meta: Mapping[str, Any] | None,
    data_name: str | None,
    dataset: LabeledDataset,
    baseline: Tensor | None,
) -> dict[str, Any]:
    """The part of ``meta.json`` that no epoch changes: configs, the target's identity, the
    intervention, the blank baseline and the data."""
    return {
        "generator_config": config.generator.to_dict(),
        "fit_config": config.to_dict(),
        "target": target_identity(gated, target_meta),
        "ablation": gated.intervention.describe(),
        "blank_baseline": "zeros" if baseline is None else "given",
        "data": {"name": data_name, "samples": len(dataset)},  # type: ignore[arg-type]
    }


@dataclass(frozen=True)
class _Job:
    """How one fit runs: checkpoint directory, resume, device, progress, process group, the
    fixed part of ``meta.json``, ``stop_after`` and the blank baseline."""

    directory: Path | None
    resume: bool
    device: torch.device
    progress: bool
    env: DistEnv
    meta: dict[str, Any]
    stop_after: int | None
    baseline: Tensor | None


def _fit(
    gated: GatedModel, dataset: LabeledDataset, config: FitConfig, job: _Job
) -> PathwayGenerator:
    env, device = job.env, job.device
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
    generator = PathwayGenerator(gated.sites, config.generator).to(device).train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if job.directory is not None and (job.directory / META_FILE).exists():
        if not job.resume:
            raise CheckpointError(
                f"{job.directory} already holds a generator; pass resume to continue it"
            )
        start_epoch, history = _restore(job.directory, generator, optimizer, config, gated)
    model: torch.nn.Module = generator
    if env.world > 1:
        model = DistributedDataParallel(
            generator, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler: DistributedSampler[int] = DistributedSampler(
        train_set, num_replicas=env.world, rank=env.rank, shuffle=True, seed=config.seed
    )
    loader = DataLoader(
        train_set, batch_size=config.batch_size // env.world, sampler=sampler, drop_last=True
    )
    last_epoch = config.epochs if job.stop_after is None else min(config.epochs, job.stop_after)
    for epoch in range(start_epoch, last_epoch + 1):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        record = _train_epoch(gated, model, optimizer, loader, config, epoch, job)
        if val_set is not None:
            record.update(
                evaluate_generator(gated, generator, val_set, config, env, device, job.baseline)
            )
        record["seconds"] = round(time.perf_counter() - started, 2)
        history.append(record)
        _end_epoch(generator, optimizer, history, job)
    generator.fit_history = history
    return generator.eval()


def _train_epoch(
    gated: GatedModel,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[Tensor, Tensor]],
    config: FitConfig,
    epoch: int,
    job: _Job,
) -> dict[str, Any]:
    """One epoch of Adam steps; the epoch's mean loss, agreement and kept fraction (all ranks)."""
    sums = torch.zeros(4, dtype=torch.float64, device=job.device)
    bar = tqdm(
        loader, desc=f"gencnp epoch {epoch}/{config.epochs}", leave=False, disable=not job.progress
    )
    for step, (images, _) in enumerate(bar):
        global_step = (epoch - 1) * len(loader) + step
        if config.schedule == "cosine":
            done = global_step / (config.epochs * len(loader))
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * config.lr * (1.0 + math.cos(math.pi * done))
        loss = step_loss(
            gated,
            model,
            images.to(job.device),
            config,
            baseline=job.baseline,
            seed=config.seed + global_step,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        sums += torch.stack(
            [
                loss.total.detach().double(),
                (loss.student.detach().argmax(1) == loss.teacher.argmax(1)).double().mean(),
                loss.output.kept_fraction().double().mean(),
                torch.ones((), dtype=torch.float64, device=job.device),
            ]
        )
        if job.progress and step % 10 == 0:
            n = float(sums[3])
            bar.set_postfix(
                loss=f"{sums[0] / n:.4f}", agree=f"{sums[1] / n:.3f}", kept=f"{sums[2] / n:.3f}"
            )
    if job.env.world > 1:
        dist.all_reduce(sums)
    steps = float(sums[3].clamp_min(1))
    return {
        "epoch": epoch,
        "train_loss": float(sums[0]) / steps,
        "train_agreement": float(sums[1]) / steps,
        "train_kept_fraction": float(sums[2]) / steps,
    }


def _end_epoch(
    generator: PathwayGenerator,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, Any]],
    job: _Job,
) -> None:
    """Print the epoch's record and (rank 0) checkpoint; all ranks meet at a barrier."""
    record = history[-1]
    if job.progress:
        tqdm.write(
            "gencnp "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
            )
        )
    if job.directory is not None and job.env.main:
        meta = {
            **job.meta,
            "epochs_done": record["epoch"],
            "world_size": job.env.world,
            "history": history,
        }
        save_checkpoint(job.directory, generator, meta, optimizer)
    if job.env.world > 1:
        dist.barrier()


def _restore(
    directory: Path,
    generator: PathwayGenerator,
    optimizer: torch.optim.Optimizer,
    config: FitConfig,
    gated: GatedModel,
) -> tuple[int, list[dict[str, Any]]]:
    """Load weights, Adam and RNG state; check the checkpoint fits ``config``, ``gated`` and its
    intervention."""
    meta = read_meta(directory)
    check_identity(meta["target"], gated, str(directory))
    saved = FitConfig.from_dict(meta.get("fit_config", {})).to_dict()
    mine = config.to_dict()
    extendable = ("epochs",) if config.schedule == "constant" else ()  # cosine: fixed horizon
    differ = [k for k in mine if k not in extendable and saved.get(k) != mine[k]]
    if differ:
        raise CheckpointError(
            f"{directory}: cannot resume with a different configuration: "
            + ", ".join(f"{k} {saved.get(k)!r} -> {mine[k]!r}" for k in differ)
        )
    trained, now = training_ablation(meta), gated.intervention.describe()
    if trained != now:
        raise CheckpointError(
            f"{directory}: trained under {trained}, cannot resume under {now}: pass the same "
            "ablation and reference"
        )
    state, _ = load_tensors(directory / GENERATOR_FILE)
    generator.load_state_dict(state)
    load_train_state(directory, optimizer)
    done = int(meta["epochs_done"])
    return done + 1, list(meta.get("history", []))
