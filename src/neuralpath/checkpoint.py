"""Target-model checkpoints: a directory with ``model.safetensors`` and ``meta.json``.

``model.safetensors`` holds the state dict; ``meta.json`` says how to rebuild the model
(:func:`neuralpath.models.build_model` arguments) and what it was trained on. Only models that
``build_model`` rebuilds (ours, or a torchvision classifier) can be stored: :func:`save_target`
rebuilds the architecture from the metadata and checks the weights fit it before writing
anything. Both files are written atomically, the weights first: a directory whose ``meta.json``
exists is complete. Weights are read with safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from neuralpath import __version__
from neuralpath.data import Preprocessing
from neuralpath.errors import CheckpointError, NeuralpathError
from neuralpath.io import load_tensors, read_json, save_tensors, state_digest, write_json_atomic
from neuralpath.models import build_model, resolve_device

if TYPE_CHECKING:
    from neuralpath.model_source import ModelCard

FORMAT = "neuralpath.target"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


@dataclass(frozen=True)
class TargetMeta:
    """What a checkpoint's ``meta.json`` records.

    ``arch_args``: keyword arguments of :func:`~neuralpath.models.build_model`
    (``num_classes``, ``in_channels`` and ``input_size`` default to ``num_classes`` and
    ``input_shape``, see :meth:`build_args`);
    ``input_shape``: ``(C, H, W)``; ``mean``/``std``: per-channel input normalisation;
    ``test_accuracy``: fraction in [0, 1]. ``seed``, ``epochs`` and ``test_accuracy`` are
    ``None`` for a model not trained by neuralpath. ``resize``: images are resized to this
    shorter side, then centre-cropped to ``H x W`` (None: ``max(H, W)``); ``source``: where a
    user's model came from (factory, weights file and digest; None for a checkpoint).
    """

    arch: str
    arch_args: dict[str, Any]
    data: str
    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int | None = None
    epochs: int | None = None
    test_accuracy: float | None = None
    created_by: str = field(default=f"neuralpath {__version__}")
    resize: int | None = None
    source: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        channels = self.input_shape[0] if len(self.input_shape) == 3 else None
        problems = [
            (len(self.input_shape) != 3, f"input_shape must be [C, H, W], got {self.input_shape}"),
            (len(self.class_names) != self.num_classes, "class_names must have num_classes names"),
            (len(self.mean) != channels or len(self.std) != channels, "mean/std need C values"),
            (any(s <= 0 for s in self.std), "std values must be positive"),
            (self.resize is not None and self.resize < 1, f"resize must be >= 1: {self.resize}"),
            (
                self.test_accuracy is not None and not 0.0 <= self.test_accuracy <= 1.0,
                f"test_accuracy must be a fraction in [0, 1], got {self.test_accuracy}",
            ),
        ]
        for failed, message in problems:
            if failed:
                raise CheckpointError(f"invalid target metadata: {message}")

    def build_args(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~neuralpath.models.build_model` for this model:
        ``arch_args`` over ``num_classes``, ``in_channels`` (``C``) and ``input_size`` (``H``)."""
        channels, height, _ = self.input_shape
        return {
            "num_classes": self.num_classes,
            "in_channels": channels,
            "input_size": height,
            **self.arch_args,
        }

    def preprocessing(self) -> Preprocessing:
        """What every data path applies for this model: its input shape, resize and its own
        normalisation (not the data set's default)."""
        return Preprocessing(self.input_shape, self.mean, self.std, self.resize)

    def to_dict(self) -> dict[str, Any]:
        """The ``meta.json`` payload."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "arch": self.arch,
            "arch_args": dict(self.arch_args),
            "data": self.data,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "seed": self.seed,
            "epochs": self.epochs,
            "test_accuracy": self.test_accuracy,
            "created_by": self.created_by,
            "resize": self.resize,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, payload: Any, source: str = META_FILE) -> TargetMeta:
        """Parse and check a ``meta.json`` payload; :class:`CheckpointError` if malformed."""
        if not isinstance(payload, dict):
            raise CheckpointError(f"{source}: expected a JSON object")
        if payload.get("format") != FORMAT:
            raise CheckpointError(
                f"{source}: not a {FORMAT} checkpoint (format {payload.get('format')!r})"
            )
        if payload.get("version") != VERSION:
            raise CheckpointError(
                f"{source}: unsupported version {payload.get('version')!r}, expected {VERSION}"
            )

        def optional(key: str, kind: type) -> Any:
            value = payload.get(key)
            return None if value is None else kind(value)

        try:
            shape = tuple(int(v) for v in payload["input_shape"])
            return cls(
                arch=str(payload["arch"]),
                arch_args=dict(payload["arch_args"]),
                data=str(payload["data"]),
                input_shape=shape,  # type: ignore[arg-type]  # length checked in __post_init__
                num_classes=int(payload["num_classes"]),
                class_names=[str(name) for name in payload["class_names"]],
                mean=tuple(float(v) for v in payload["mean"]),
                std=tuple(float(v) for v in payload["std"]),
                seed=optional("seed", int),
                epochs=optional("epochs", int),
                test_accuracy=optional("test_accuracy", float),
                created_by=str(payload.get("created_by", "")),
                resize=optional("resize", int),
                source=optional("source", dict),
            )
        except KeyError as exc:
            raise CheckpointError(f"{source}: missing field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed field: {exc}") from exc


@dataclass
class Target:
    """A target model and its metadata. ``directory``: the checkpoint it was loaded from (None
    for a user's model, see :mod:`neuralpath.model_source`)."""

    model: nn.Module
    meta: TargetMeta
    directory: Path | None = None

    @classmethod
    def from_module(cls, model: nn.Module, card: ModelCard) -> Target:
        """A target of the user's ``model`` as it is (device, dtype, mode untouched), described by
        ``card`` (input shape, mean and std needed; classes inferred from one forward)."""
        from neuralpath.model_source import target_from_module

        return target_from_module(model, card)

    def reference_dir(self, override: str | os.PathLike[str] | None = None) -> Path:
        """Where the target's reference statistics live: ``override``, else the checkpoint
        directory, else the user cache keyed by the weights' digest (:func:`cache_dir`)."""
        if override is not None:
            return Path(override)
        if self.directory is not None:
            return self.directory
        return cache_dir() / "targets" / state_digest(self.model)[:16]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def example_input(self, batch: int = 1) -> Tensor:
        """A zero batch ``[batch, C, H, W]`` (the data-set mean image) on the model's device."""
        return torch.zeros(batch, *self.meta.input_shape, device=self.device)


def save_target(directory: str | os.PathLike[str], model: nn.Module, meta: TargetMeta) -> Path:
    """Write ``model``'s state dict and ``meta`` into ``directory`` (created if needed).

    ``meta.arch`` and :meth:`TargetMeta.build_args` must rebuild ``model`` with ``build_model``:
    checked first (same parameter and buffer names and shapes), so a checkpoint that
    :func:`load_target` cannot load is never written (:class:`CheckpointError`, nothing
    written). Returns the directory.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"cannot write a checkpoint into {path}: not a directory")
    state = model.state_dict()
    context = f"cannot save a checkpoint of this model as {meta.arch!r}"
    with torch.random.fork_rng(devices=[]):  # its initialisation leaves the caller's RNG alone
        rebuilt = _rebuild(meta, context)
    check_state(rebuilt.state_dict(), state, f"{context}: its weights do not fit the rebuilt one")
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS_FILE, state, {"format": FORMAT, "version": VERSION})
    write_json_atomic(path / META_FILE, meta.to_dict())
    return path


def load_target(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> Target:
    """Rebuild the model saved in ``directory`` on ``device``, in eval mode.

    The model gets the floating-point dtype of the saved weights (float32 unless saved
    otherwise). Raises :class:`CheckpointError` for a missing directory or file, corrupt or
    truncated files, metadata that rebuilds no model, or weights that do not fit the
    architecture (missing/unexpected keys, other shapes).
    """
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    meta = TargetMeta.from_dict(read_json(path / META_FILE), str(path / META_FILE))
    model = _rebuild(meta, str(path / META_FILE))
    state, _ = load_tensors(path / WEIGHTS_FILE)
    check_state(model.state_dict(), state, f"{path / WEIGHTS_FILE} does not fit {meta.arch!r}")
    dtypes = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    model.load_state_dict(state)
    return Target(model.to(resolve_device(device)).eval(), meta, path)


def cache_dir() -> Path:
    """neuralpath's cache: ``$NEURALPATH_CACHE``, else ``$XDG_CACHE_HOME/neuralpath``, else
    ``~/.cache/neuralpath``."""
    if os.environ.get("NEURALPATH_CACHE"):
        return Path(os.environ["NEURALPATH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuralpath"


def _rebuild(meta: TargetMeta, context: str) -> nn.Module:
    """``build_model(meta.arch, **meta.build_args())``; :class:`CheckpointError` naming why not."""
    args = meta.build_args()
    try:
        return build_model(meta.arch, **args)
    except NeuralpathError as exc:
        problem = str(exc)
    except TypeError as exc:  # arguments build_model does not take
        problem = f"arch_args {sorted(meta.arch_args)} are not build_model arguments ({exc})"
    raise CheckpointError(f"{context}: cannot rebuild {meta.arch!r} from {args}: {problem}")


def check_state(expected: dict[str, Tensor], found: dict[str, Tensor], context: str) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped entries."""

    def listed(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")

    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = [
        f"{name} {list(found[name].shape)} vs {list(expected[name].shape)}"
        for name in sorted(expected.keys() & found.keys())
        if found[name].shape != expected[name].shape
    ]
    problems = [
        f"{label}: {listed(names)}"
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch (saved vs model)", reshaped),
        )
        if names
    ]
    if problems:
        raise CheckpointError(f"{context}: " + "; ".join(problems))
