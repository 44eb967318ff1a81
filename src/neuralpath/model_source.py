"""Targets from a user's own model: a factory or a torchvision name, weights, and a model card.

A model is given by a *spec*:

- ``package.module:function`` or ``path/to/file.py:function``: a factory called without
  arguments that returns an ``nn.Module`` (a file is imported by path, outside any package);
- ``torchvision:NAME``: a torchvision classifier (``torchvision.models.get_model``, random
  initialisation unless weights are given).

Weights: a ``.safetensors`` file (read with safetensors), any other file read with
``torch.load(weights_only=True)`` (a plain state dict, or one under ``"state_dict"`` or
``"model"``), or, for ``torchvision:NAME``, a weights enum such as
``ResNet18_Weights.IMAGENET1K_V1``: its file must already be in torch's hub cache
(``torch.hub.get_dir()/checkpoints``); nothing is ever downloaded. Weights that do not fit the
model are an error listing the missing, unexpected and mis-shaped entries.

What the data paths need (input shape ``C,H,W``, normalisation mean/std, the preprocessing resize
and the class names) is declared once in a :class:`ModelCard`: a small JSON or TOML file, flags,
or a torchvision weights enum's metadata. ``num_classes`` is inferred from one forward when not
given. The result is a :class:`~neuralpath.checkpoint.Target` (model in eval mode on the device)
whose :class:`~neuralpath.checkpoint.TargetMeta` records where the model came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from neuralpath.checkpoint import Target, TargetMeta, check_state
from neuralpath.errors import CheckpointError, InputError
from neuralpath.gating import frozen
from neuralpath.io import state_digest
from neuralpath.models import resolve_device

TORCHVISION_PREFIX = "torchvision:"
WEIGHTS_ENUM = re.compile(r"^[A-Za-z][A-Za-z0-9_]*_Weights\.[A-Za-z0-9_]+$")
"""A torchvision weights enum name, e.g. ``ResNet18_Weights.IMAGENET1K_V1``."""


@dataclass(frozen=True)
class ModelCard:
    """What a model takes and predicts, declared once (every field optional until merged).

    ``input_shape``: ``(C, H, W)``; ``mean``/``std``: per-channel normalisation of pixel values
    in [0, 1] (C values each); ``resize``: images are resized so that their shorter side is
    ``resize`` pixels, then centre-cropped to ``H x W`` (None: ``max(H, W)``); ``class_names``:
    one per output; ``num_classes``: outputs (None: inferred from one forward); ``data``: the
    data set the commands use by default.
    """

    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    num_classes: int | None = None
    resize: int | None = None
    data: str | None = None

    def __post_init__(self) -> None:
        shape, mean, std = self.input_shape, self.mean, self.std
        if shape is not None and (len(shape) != 3 or min(shape) < 1):
            raise InputError(f"model card: input_shape must be [C, H, W] > 0, got {list(shape)}")
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and shape is not None and len(values) != shape[0]:
                raise InputError(
                    f"model card: {name} has {len(values)} values, input_shape has {shape[0]} "
                    "channel(s)"
                )
        if std is not None and any(s <= 0 for s in std):
            raise InputError(f"model card: std values must be positive, got {list(std)}")
        if self.num_classes is not None and self.num_classes < 1:
            raise InputError(f"model card: num_classes must be >= 1, got {self.num_classes}")
        if self.resize is not None and self.resize < 1:
            raise InputError(f"model card: resize must be >= 1, got {self.resize}")

    def merged(self, over: ModelCard) -> ModelCard:
        """This card with every field that ``over`` sets replaced by ``over``'s."""
        given = {f.name: getattr(over, f.name) for f in dataclasses.fields(over)}
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    @classmethod
    def from_mapping(cls, payload: Any, source: str = "model card") -> ModelCard:
        """Parse a card's JSON/TOML payload; :class:`InputError` naming a bad or unknown field."""
        if not isinstance(payload, Mapping):
            raise InputError(f"{source}: expected a table of fields")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - fields)
        if unknown:
            raise InputError(
                f"{source}: unknown field(s) {', '.join(unknown)}; known: "
                + ", ".join(sorted(fields))
            )
        parsers: dict[str, Any] = {
            "input_shape": lambda v: tuple(int(x) for x in v),
            "mean": lambda v: tuple(float(x) for x in v),
            "std": lambda v: tuple(float(x) for x in v),
            "class_names": lambda v: tuple(str(x) for x in v),
            "num_classes": int,
            "resize": int,
            "data": str,
        }
        values: dict[str, Any] = {}
        for key, value in payload.items():
            is_list = isinstance(value, list)
            if (key in ("input_shape", "mean", "std", "class_names")) != is_list:
                raise InputError(f"{source}: field {key} has the wrong type ({value!r})")
            try:
                values[key] = parsers[key](value)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{source}: field {key} is malformed ({value!r}): {exc}") from exc
        try:
            return cls(**values)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from exc

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelCard:
        """A card from a ``.json`` or ``.toml`` file."""
        file = Path(path)
        if not file.is_file():
            raise InputError(f"model card not found: {file}")
        try:
            if file.suffix.lower() == ".toml":
                payload: Any = tomllib.loads(file.read_text())
            elif file.suffix.lower() == ".json":
                payload = json.loads(file.read_text())
            else:
                raise InputError(f"model card {file}: expected a .json or .toml file")
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"model card {file} does not parse: {exc}") from exc
        return cls.from_mapping(payload, f"model card {file}")


IMAGENET_CARD = ModelCard(
    input_shape=(3, 224, 224),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resize=256,
)
"""What a torchvision classifier without a weights enum takes unless the card says otherwise."""


def open_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    card: ModelCard | None = None,
    device: str | torch.device = "auto",
) -> Target:
    """The :class:`Target` of the model ``spec`` (see the module) with ``weights`` (a file, a
    torchvision weights enum name, or None: the factory's own initialisation) and ``card``.

    Raises :class:`InputError` (bad spec, factory, card) or :class:`CheckpointError` (weights
    file unreadable or not fitting the model), each naming the problem.
    """
    card = card or ModelCard()
    origin: dict[str, Any] = {"model": spec, "weights": None if weights is None else str(weights)}
    if spec.startswith(TORCHVISION_PREFIX):
        model, card = _torchvision_model(spec[len(TORCHVISION_PREFIX) :], weights, card)
    else:
        model = call_factory(spec)
        if weights is not None:
            load_weights(model, weights)
    if weights is not None:
        origin["weights_sha256"] = state_digest(model)
    model = model.to(resolve_device(device)).eval()
    return target_from_module(model, card, origin=origin)


def target_from_module(
    model: nn.Module, card: ModelCard, *, origin: Mapping[str, Any] | None = None
) -> Target:
    """A :class:`Target` of ``model`` as it is (device, dtype and mode untouched) described by
    ``card``, which must give ``input_shape``, ``mean`` and ``std``.

    One forward of a zero batch ``[1, C, H, W]`` (eval mode, no gradients, the model's state
    restored after) checks that the input shape runs through the model and gives ``[1, K]``
    logits: ``num_classes`` is ``K`` unless the card says otherwise (then they must agree).
    """
    missing = [name for name in ("input_shape", "mean", "std") if getattr(card, name) is None]
    if missing:
        raise InputError(
            f"the model card lacks {', '.join(missing)}: declare them in --model-card or with "
            "--input-shape C,H,W, --mean, --std"
        )
    assert card.input_shape is not None and card.mean is not None and card.std is not None
    classes = _probe_classes(model, card.input_shape)
    if card.num_classes is not None and card.num_classes != classes:
        raise InputError(
            f"the model card says {card.num_classes} classes, the model outputs {classes}"
        )
    names = list(card.class_names) if card.class_names else [str(k) for k in range(classes)]
    if len(names) != classes:
        raise InputError(f"the model card names {len(names)} classes, the model outputs {classes}")
    source = {"model": type(model).__name__, **(origin or {})}
    meta = TargetMeta(
        arch=str(source["model"]),
        arch_args={},
        data=card.data or "",
        input_shape=card.input_shape,
        num_classes=classes,
        class_names=names,
        mean=card.mean,
        std=card.std,
        created_by="user model",
        resize=card.resize,
        source=source,
    )
    return Target(model, meta)


def _probe_classes(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Number of logits of one zero image of ``input_shape``; :class:`InputError` if it fails."""
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    probe = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    try:
        with frozen(model), torch.no_grad():
            output = model(probe)
    except Exception as exc:  # any failure: the declared input does not fit the model
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"an input of shape {list(input_shape)} (model card input_shape) does not run "
            f"through the model: {message}"
        ) from exc
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != 1:
        shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InputError(
            f"the model must return logits [N, K] for an input [N, C, H, W], got {shape}"
        )
    return int(output.shape[1])


# ------------------------------------------------------------------------------ factories


def call_factory(spec: str) -> nn.Module:
    """Import ``module:function`` or ``file.py:function`` and call the function without
    arguments; it must return an ``nn.Module``."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise InputError(
            f"--model {spec!r}: expected package.module:function, path/to/file.py:function or "
            "torchvision:NAME"
        )
    module = _import_file(Path(where)) if _is_path(where) else _import_module(where)
    factory = getattr(module, name, None)
    if factory is None:
        raise InputError(f"--model {spec!r}: {where} has no attribute {name!r}")
    if not callable(factory):
        raise InputError(f"--model {spec!r}: {name} is not callable ({type(factory).__name__})")
    try:
        model = factory()
    except Exception as exc:  # the user's code: report it as bad input, with its message
        raise InputError(f"--model {spec!r}: {name}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--model {spec!r}: {name}() returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"--model: file not found: {path}")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"neuralpath_user_model_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"--model: cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code
        del sys.modules[name]
        raise InputError(f"--model: importing {path} raised {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise InputError(f"--model: cannot import module {name!r}: {exc}") from exc
    except Exception as exc:  # the user's code
        raise InputError(f"--model: importing {name} raised {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------ torchvision


def _torchvision_model(
    name: str, weights: str | os.PathLike[str] | None, card: ModelCard
) -> tuple[nn.Module, ModelCard]:
    """torchvision classifier ``name`` and its card: the weights enum's metadata (or ImageNet's
    defaults) under the given ``card``."""
    import torchvision.models

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise InputError(
            f"--model torchvision:{name}: not a torchvision classifier "
            "(torchvision.models.list_models())"
        )
    enum = _weights_enum(weights) if weights is not None else None
    card = (_enum_card(enum) if enum is not None else IMAGENET_CARD).merged(card)
    options = {} if card.num_classes is None else {"num_classes": card.num_classes}
    with torch.random.fork_rng(devices=[]):
        model: nn.Module = torchvision.models.get_model(name, weights=None, **options)
    if enum is not None:
        load_weights(model, _enum_file(enum))
    elif weights is not None:
        load_weights(model, weights)
    return model, card


def _weights_enum(weights: str | os.PathLike[str]) -> Any:
    """The torchvision weights enum named ``weights`` (None when it names a file)."""
    text = str(weights)
    if Path(text).exists() or not WEIGHTS_ENUM.match(text):
        return None
    import torchvision.models

    try:
        return torchvision.models.get_weight(text)
    except (ValueError, KeyError, AttributeError) as exc:
        raise InputError(
            f"--weights {text}: not a file and not a torchvision weights enum"
        ) from exc


def _enum_card(enum: Any) -> ModelCard:
    """Classes, normalisation, crop and resize of a torchvision weights enum."""
    transforms = enum.transforms()
    crop = int(transforms.crop_size[0])
    categories = enum.meta.get("categories")
    return ModelCard(
        input_shape=(3, crop, crop),
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
        class_names=tuple(categories) if categories else None,
        num_classes=len(categories) if categories else None,
        resize=int(transforms.resize_size[0]),
    )


def _enum_file(enum: Any) -> Path:
    """The weights file of ``enum`` in torch's hub cache; :class:`CheckpointError` saying where
    to put it when it is not there (neuralpath never downloads)."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / Path(str(enum.url)).name
    if not file.is_file():
        raise CheckpointError(
            f"the weights file of {type(enum).__name__}.{enum.name} is not in {folder}: download "
            f"{enum.url} and put it there as {file.name} (neuralpath never downloads)"
        )
    return file


# ------------------------------------------------------------------------------ weights


def read_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict in ``path``: safetensors for ``.safetensors``, else
    ``torch.load(weights_only=True)`` (plain, or nested under ``"state_dict"``/``"model"``)."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"weights file not found: {file}")
    if file.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or failed: never retried without weights_only
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{file} cannot be read with torch.load(weights_only=True) (only tensors and plain "
            f"containers are loaded, no pickled code): {first}"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise CheckpointError(
            f"{file} does not hold a state dict (name -> tensor), plain or under 'state_dict' "
            "or 'model'"
        )
    return {str(k): v for k, v in payload.items()}


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the state dict of ``path`` into ``model`` (strict; a mismatch is a
    :class:`CheckpointError` listing missing, unexpected and mis-shaped entries)."""
    state = read_state(path)
    check_state(model.state_dict(), state, f"the weights in {path} do not fit the model")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {path} do not load: {exc}") from exc
    return model


__all__ = [
    "ModelCard",
    "call_factory",
    "load_weights",
    "open_model",
    "read_state",
    "target_from_module",
]
