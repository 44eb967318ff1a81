"""ROAR — RemOve And Retrain (Hooker et al. 2019) for saliency maps.

For each attribution method and each ``q`` in ``percentages``: remove the ``q`` % most
relevant pixels of every training and test image (relevance computed on the original target
model, ranked as in :mod:`~neuralpath.metrics.perturbation`) by ``removal``: set them to the
baseline (0 = the data-set mean; the default) or impute them by ROAD's noisy linear imputation
(``"noisy-linear"``, noise seeded by ``seed`` and each image's values; a sparse solve of a few
milliseconds per image and ``q`` on one CPU core, so a full split takes minutes); then train a
fresh model of the target's architecture from scratch on the perturbed training set, and report
its accuracy on the perturbed test set. A steeper accuracy drop means the map
found the information the model needs: **lower accuracy is better**.

Retraining reuses :func:`neuralpath.train.train_target` (same architecture, width, optimiser
and schedule as the target). ROAR is expensive, so it is **resumable**: the work directory holds

* ``config.json``: what the rankings depend on (architecture, data subsets, target, channel
  reduction); a rerun with other values refuses to mix them;
* ``ranks/<method>.safetensors``: per split, every image's pixel indices sorted by decreasing
  relevance (``int16``/``int32`` ``[N, H*W]``), from which the mask of any ``q`` follows;
* ``results/<recipe>/<method>/q<q>.json`` and ``results/<recipe>/unperturbed.json``: one file per
  finished cell, under a folder named after the retraining recipe (epochs, batch size, lr, seed,
  baseline, and the removal mode with its noise std unless it is ``"baseline"``), so a longer
  retraining or another removal mode reuses the rankings but never another recipe's results.

A rerun loads what exists and only computes the missing cells.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from neuralpath.data import ImageDataset, subset
from neuralpath.errors import CheckpointError, InputError
from neuralpath.io import load_tensors, read_json, save_tensors, state_digest, write_json_atomic
from neuralpath.metrics.perturbation import (
    DEFAULT_NOISE_STD,
    REDUCTIONS,
    Baseline,
    Explainer,
    Removal,
    check_percentages,
    check_removal,
    model_device,
    order_ranks,
    pixel_count,
    predict_proba,
    relevance_for,
    relevance_order,
    remove_pixels,
    top_mask,
)
from neuralpath.train import DEFAULT_LR

Trainer = Callable[[ImageDataset, ImageDataset, int], float]
"""``trainer(train, test, seed) -> test accuracy`` of a freshly trained model."""

DEFAULT_ROAR_PERCENTAGES: tuple[float, ...] = (10.0, 30.0, 50.0, 70.0, 90.0)
UNPERTURBED = "unperturbed"
_PERTURB_CHUNK = 1024  # images removed/imputed at a time (bounds the float64 copies)


def make_trainer(
    arch: str,
    arch_args: Mapping[str, Any],
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = DEFAULT_LR,
    device: str | torch.device = "cpu",
) -> Trainer:
    """A :data:`Trainer` that trains ``arch`` (with ``arch_args["width"]``) via ``train_target``."""
    from neuralpath.train import train_target

    def trainer(train: ImageDataset, test: ImageDataset, seed: int) -> float:
        result = train_target(
            arch,
            (train, test),
            epochs=epochs,
            seed=seed,
            device=device,
            width=arch_args.get("width"),
            batch_size=batch_size,
            lr=lr,
            progress=False,
        )
        return result.test_accuracy

    return trainer


def _slug(name: str) -> str:
    """The file-name form of a method name (``:`` becomes ``_``); rejects unsafe names."""
    if not re.fullmatch(r"[A-Za-z0-9._:+-]+", name) or name in (".", "..", UNPERTURBED):
        raise InputError(
            f"method name {name!r} must be non-empty, use only [A-Za-z0-9._:+-], and not be {UNPERTURBED!r}"
        )
    return name.replace(":", "_")


def _fingerprint(dataset: ImageDataset) -> dict[str, Any]:
    images = dataset.images.double()
    return {
        "name": dataset.name,
        "split": dataset.split,
        "size": len(dataset),
        "shape": list(dataset.input_shape),
        "image_sum": round(images.sum().item(), 4),
        "image_abs_sum": round(images.abs().sum().item(), 4),
        "label_sum": int(dataset.labels.sum().item()),
    }


@dataclass
class RoarResult:
    """Test accuracy (fraction) per method and percentage; ``unperturbed``: retrained on clean data."""

    accuracy: dict[str, dict[float, float]]
    unperturbed: float | None
    percentages: tuple[float, ...]
    trained: int = 0
    higher_is_better: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "metric": "roar",
            "higher_is_better": self.higher_is_better,
            "percentages": list(self.percentages),
            "unperturbed_accuracy": self.unperturbed,
            "accuracy": {
                m: {f"{q:g}": acc for q, acc in row.items()} for m, row in self.accuracy.items()
            },
            "models_trained_this_run": self.trained,
            "config": self.config,
        }


class ROAR:
    """Remove-and-retrain evaluation with a resumable work directory.

    ``percentages``: q values in (0, 100]; ``epochs``/``batch_size``/``lr``: retraining;
    ``train_limit``/``test_limit``: random subsets (by ``seed``) of the splits; ``target``:
    ``"prediction"`` (the target model's) or ``"label"`` as the class each map explains;
    ``removal``: ``"baseline"`` (default, as in Hooker et al.) or ``"noisy-linear"`` (ROAD) with
    ``noise_std`` (seeded by ``seed``), see :mod:`~neuralpath.metrics.perturbation`;
    ``trainer``: replaces the default :func:`make_trainer` (e.g. to count or log trainings).

    Unlike the batch metrics (``metric(model, inputs, targets, explanation)``, see
    :mod:`~neuralpath.metrics.perturbation`), ROAR retrains models on whole perturbed splits and
    shares the unperturbed retraining between methods, so its call takes the splits and every
    method's :data:`~neuralpath.metrics.perturbation.Explainer` at once; its result says its
    direction like theirs.
    """

    name = "roar"
    higher_is_better = False
    direction = "lower"

    def __init__(  # noqa: PLR0913 -- public metric; keyword-only settings = its JSON config
        self,
        work_dir: str | os.PathLike[str],
        *,
        percentages: Sequence[float] = DEFAULT_ROAR_PERCENTAGES,
        epochs: int = 1,
        batch_size: int = 128,
        lr: float = DEFAULT_LR,
        train_limit: int | None = None,
        test_limit: int | None = None,
        seed: int = 0,
        target: str = "prediction",
        reduction: str = "sum-abs",
        baseline: Baseline = 0.0,
        removal: Removal = "baseline",
        noise_std: float = DEFAULT_NOISE_STD,
        explain_batch_size: int = 128,
        include_unperturbed: bool = True,
        trainer: Trainer | None = None,
        progress: bool = True,
    ):
        if target not in ("prediction", "label"):
            raise InputError(f"target must be 'prediction' or 'label', got {target!r}")
        if reduction not in REDUCTIONS:
            raise InputError(
                f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}"
            )
        for key, value in (
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("explain_batch_size", explain_batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{key} must be a positive integer, got {value!r}")
        check_removal(removal, noise_std, seed)
        if isinstance(baseline, Tensor) and baseline.numel() != 1:
            raise InputError(
                "ROAR takes a scalar baseline (or a [C] tensor); per-image baselines do not apply"
            )
        self.work_dir = Path(work_dir)
        self.percentages = check_percentages(percentages)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.train_limit = train_limit
        self.test_limit = test_limit
        self.seed = seed
        self.target = target
        self.reduction = reduction
        self.baseline = baseline
        self.removal = removal
        self.noise_std = noise_std
        self.explain_batch_size = explain_batch_size
        self.include_unperturbed = include_unperturbed
        self.trainer = trainer
        self.progress = progress

    # ------------------------------------------------------------------ cache layout
    def _config(
        self,
        model: nn.Module,
        arch: str,
        arch_args: Mapping[str, Any],
        train: ImageDataset,
        test: ImageDataset,
    ) -> dict[str, Any]:
        """What the cached pixel rankings depend on, the target's weights included."""
        return {
            "model": state_digest(model),
            "arch": arch,
            "arch_args": dict(arch_args),
            "target": self.target,
            "reduction": self.reduction,
            "train": _fingerprint(train),
            "test": _fingerprint(test),
        }

    @property
    def training_key(self) -> str:
        """Folder name of the results of one retraining recipe (epochs, batch, lr, seed, baseline,
        removal mode and its noise std; the default ``"baseline"`` mode adds nothing)."""
        base = self.baseline.tolist() if isinstance(self.baseline, Tensor) else float(self.baseline)
        parts = [f"e{self.epochs}-bs{self.batch_size}-lr{self.lr:g}-seed{self.seed}-baseline{base}"]
        if self.removal != "baseline":
            parts.append(f"{self.removal}{self.noise_std!r}")
        if self.trainer is not None:
            parts.append("custom")
        return "-".join(parts).replace(" ", "")

    def _check_config(self, config: dict[str, Any]) -> None:
        path = self.work_dir / "config.json"
        if path.exists():
            saved = read_json(path)
            changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            if changed:
                raise CheckpointError(
                    f"ROAR work dir {self.work_dir} was made with other settings ({', '.join(changed)}); "
                    "use a new work dir or delete it"
                )
        else:
            write_json_atomic(path, config)

    def _cell_path(self, method: str, q: float) -> Path:
        return self.work_dir / "results" / self.training_key / _slug(method) / f"q{q:g}.json"

    # ------------------------------------------------------------------ ranks
    def _ranks_path(self, method: str) -> Path:
        return self.work_dir / "ranks" / f"{_slug(method)}.safetensors"

    def _check_settings(self, method: str, settings: Mapping[str, Any]) -> None:
        """Refuse a work dir whose cached maps of ``method`` were made with other ``settings``."""
        path = self._ranks_path(method)
        if path.exists():
            saved = (load_tensors(path)[1] or {}).get("settings", {})
            if saved != json.loads(json.dumps(settings)):
                raise CheckpointError(
                    f"ROAR work dir {self.work_dir} holds {method!r} maps made with other settings "
                    f"({saved} there, {dict(settings)} now); use a new work dir or delete {path}"
                )

    def _ranks(
        self,
        method: str,
        explain: Explainer,
        model: nn.Module,
        splits: Mapping[str, ImageDataset],
        settings: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        path = self._ranks_path(method)
        if path.exists():
            tensors, meta = load_tensors(path)
            sizes = {name: len(ds) for name, ds in splits.items()}
            stored = (meta or {}).get("method"), (meta or {}).get("sizes")
            if stored != (method, sizes) or set(tensors) != set(splits):
                raise CheckpointError(f"{path} does not belong to this ROAR run; delete it")
            return tensors
        ranks = {}
        for split, dataset in splits.items():
            parts = []
            starts = range(0, len(dataset), self.explain_batch_size)
            for start in tqdm(
                starts, desc=f"{method}: {split} maps", disable=not self.progress, leave=False
            ):
                x = dataset.images[start : start + self.explain_batch_size].to(model_device(model))
                if self.target == "label":
                    t = dataset.labels[start : start + self.explain_batch_size].to(x.device)
                else:
                    t = predict_proba(model, x).argmax(dim=1)
                relevance = relevance_for(x, t, explain, self.reduction)
                order = relevance_order(relevance, most_relevant_first=True)
                parts.append(order.to(torch.int16 if order.shape[1] < 2**15 else torch.int32).cpu())
            ranks[split] = torch.cat(parts)
        sizes = {n: len(d) for n, d in splits.items()}
        save_tensors(path, ranks, {"method": method, "sizes": sizes, "settings": dict(settings)})
        return ranks

    def _perturbed(self, dataset: ImageDataset, order: Tensor, q: float) -> ImageDataset:
        """``dataset`` with the top-``q`` % pixels of each image (``order [N, H*W]``) removed."""
        images = dataset.images
        spatial = (images.shape[2], images.shape[3])
        parts = []
        for start in range(0, images.shape[0], _PERTURB_CHUNK):
            ranks = order_ranks(order[start : start + _PERTURB_CHUNK].long())
            parts.append(
                remove_pixels(
                    images[start : start + _PERTURB_CHUNK],
                    top_mask(ranks, pixel_count(q, ranks.shape[1]), spatial),
                    self.removal,
                    baseline=self.baseline,
                    noise_std=self.noise_std,
                    seed=self.seed,
                )
            )
        return dataclasses.replace(dataset, images=torch.cat(parts), masks=None)

    # ------------------------------------------------------------------ run
    def __call__(
        self,
        model: nn.Module,
        arch: str,
        arch_args: Mapping[str, Any],
        train_set: ImageDataset,
        test_set: ImageDataset,
        explainers: Mapping[str, Explainer],
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> RoarResult:
        """Run (or resume) every missing (method, q) cell; ``model``: the target, used for the maps.

        ``arch``/``arch_args``: how the target was built (``build_model``), used for retraining.
        ``explainers``: method name -> ``explain(inputs, targets)`` on ``model``. ``settings``:
        method name -> what its maps depend on beyond the name (JSON-able, e.g. sparsity and
        finder settings); a work dir whose maps were made with other settings is refused.
        """
        if not explainers:
            raise InputError("need at least one attribution method")
        settings = settings or {}
        for name in explainers:
            _slug(name)
            self._check_settings(name, settings.get(name, {}))
        splits = {
            "train": subset(train_set, self.train_limit, self.seed),
            "test": subset(test_set, self.test_limit, self.seed),
        }
        config = self._config(model, arch, arch_args, splits["train"], splits["test"])
        self._check_config(config)
        trainer = self.trainer or make_trainer(
            arch,
            arch_args,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            device=model_device(model),
        )
        unperturbed_path = self.work_dir / "results" / self.training_key / f"{UNPERTURBED}.json"
        trained = self._train_missing(
            trainer, model, splits, explainers, settings, unperturbed_path
        )
        return self._result(list(explainers), unperturbed_path, config, trained)

    def _train_missing(
        self,
        trainer: Trainer,
        model: nn.Module,
        splits: Mapping[str, ImageDataset],
        explainers: Mapping[str, Explainer],
        settings: Mapping[str, Mapping[str, Any]],
        unperturbed_path: Path,
    ) -> int:
        """Train every cell without a result file (the unperturbed one first); how many."""
        todo = [
            (m, q)
            for m in explainers
            for q in self.percentages
            if not self._cell_path(m, q).exists()
        ]
        retrain_clean = self.include_unperturbed and not unperturbed_path.exists()
        total = len(todo) + int(retrain_clean)
        with tqdm(total=total, desc="ROAR retraining", disable=not self.progress) as bar:
            if retrain_clean:
                self._train_cell(trainer, splits["train"], splits["test"], unperturbed_path, {})
                bar.update()
            for method in dict.fromkeys(m for m, _ in todo):
                ranks = self._ranks(
                    method, explainers[method], model, splits, settings.get(method, {})
                )
                for q in (q for m, q in todo if m == method):
                    bar.set_postfix(method=method, q=f"{q:g}")
                    self._train_cell(
                        trainer,
                        self._perturbed(splits["train"], ranks["train"], q),
                        self._perturbed(splits["test"], ranks["test"], q),
                        self._cell_path(method, q),
                        {"method": method, "percentage": q},
                    )
                    bar.update()
        return total

    def _train_cell(
        self,
        trainer: Trainer,
        train: ImageDataset,
        test: ImageDataset,
        path: Path,
        cell: dict[str, Any],
    ) -> None:
        """Train on ``train``, test on ``test`` and write ``cell`` with the accuracy to ``path``."""
        started = time.perf_counter()
        accuracy = trainer(train, test, self.seed)
        seconds = round(time.perf_counter() - started, 2)
        write_json_atomic(path, {**cell, "accuracy": accuracy, "seconds": seconds})

    def _result(
        self, methods: list[str], unperturbed_path: Path, config: dict[str, Any], trained: int
    ) -> RoarResult:
        """Every cell's accuracy read back from the work directory."""
        accuracy_table = {
            m: {q: read_json(self._cell_path(m, q))["accuracy"] for q in self.percentages}
            for m in methods
        }
        unperturbed = read_json(unperturbed_path)["accuracy"] if unperturbed_path.exists() else None
        config["training"] = self.training_key
        config["removal"] = {"mode": self.removal, "noise_std": self.noise_std}
        return RoarResult(accuracy_table, unperturbed, self.percentages, trained, config=config)
