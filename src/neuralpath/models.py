"""Target classifiers: AlexNet and VGG-11 for small inputs, and any torchvision classifier.

Our ``alexnet`` and ``vgg11`` follow torchvision's module layout (``features``, ``classifier``
``nn.Sequential``s; every conv followed by an ``nn.ReLU`` module), scaled for 28-32 px inputs
with 1 or 3 channels: 3×3 convs, 2×2 max pools with ``ceil_mode`` (so 28 px inputs work), and
channel counts multiplied by ``width``. torchvision's own architectures are reached by their
name, or as ``"torchvision.<name>"`` when ours shadow them (``"torchvision.alexnet"``).
"""

from __future__ import annotations

import difflib
import math

import torch
from torch import Tensor, nn

from neuralpath.errors import InputError
from neuralpath.vit import VIT_ARCHS, build_vit

OUR_ARCHS = ("alexnet", "vgg11")
DEFAULT_WIDTHS = {"alexnet": 0.25, "vgg11": 0.25}
"""Width multipliers the CLI uses for our architectures (see docs/results.md)."""

VGG11_CONFIG: tuple[int | str, ...] = (
    64,
    "M",
    128,
    "M",
    256,
    256,
    "M",
    512,
    512,
    "M",
    512,
    512,
    "M",
)
ALEXNET_CONFIG: tuple[int | str, ...] = (64, "M", 192, "M", 384, 256, 256, "M")
TORCHVISION_PREFIX = "torchvision."
MAX_POOLED_SIDE = 4
"""Feature maps wider than this (inputs over 32 px) are average-pooled to it before the FCs."""


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _pooled_side(size: int, config: tuple[int | str, ...]) -> int:
    """Side of the feature map entering the classifier (after ``avgpool``)."""
    for item in config:
        if item == "M":
            size = math.ceil(size / 2)
    return min(size, MAX_POOLED_SIDE)


def _features(
    config: tuple[int | str, ...], in_channels: int, width: float, batch_norm: bool
) -> nn.Sequential:
    """Conv 3×3 (+ BatchNorm) + ReLU per number in ``config``; ``"M"``: 2×2 max pool."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            continue
        out = _scaled(int(item), width)
        layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers)


class _SmallConvNet(nn.Module):
    """``features`` (:func:`_features` of ``config``) -> ``avgpool`` to ``side`` -> flatten ->
    ``classifier`` (set by the subclass). Input ``[B, in_channels, input_size, input_size]``,
    output logits ``[B, num_classes]``."""

    classifier: nn.Sequential

    def __init__(
        self,
        config: tuple[int | str, ...],
        in_channels: int,
        input_size: int,
        width: float,
        batch_norm: bool,
    ):
        super().__init__()
        self.features = _features(config, in_channels, width, batch_norm=batch_norm)
        self.side = _pooled_side(input_size, config)
        self.avgpool = nn.AdaptiveAvgPool2d(self.side)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.avgpool(self.features(x)).flatten(1))
        return logits


class SmallAlexNet(_SmallConvNet):
    """AlexNet for small images: 5 conv + ReLU layers, 3 pools, 3 FC layers with dropout.

    For ``width`` 1 the layer widths are torchvision's (64-192-384-256-256), with 2048 FC units.

    Input ``[B, in_channels, input_size, input_size]``, output logits ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: int, width: float):
        super().__init__(ALEXNET_CONFIG, in_channels, input_size, width, batch_norm=False)
        side = self.side
        channels, hidden = _scaled(256, width), _scaled(2048, width)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )


class SmallVGG11(_SmallConvNet):
    """VGG-11 (configuration A) with BatchNorm for small images: 8 conv + BN + ReLU layers,
    5 pools, then ``Linear -> ReLU -> Dropout -> Linear``.

    Input ``[B, in_channels, input_size, input_size]``, output logits ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int, in_channels: int, input_size: int, width: float):
        super().__init__(VGG11_CONFIG, in_channels, input_size, width, batch_norm=True)
        side, channels = self.side, _scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(channels, num_classes),
        )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise a torch device spec, checked."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return resolved


def torchvision_archs() -> list[str]:
    """Names of torchvision's image classifiers (``torchvision.models.list_models``)."""
    import torchvision.models

    names: list[str] = torchvision.models.list_models(module=torchvision.models)
    return names


def default_width(arch: str) -> float:
    """The width multiplier used when none is given: ours per :data:`DEFAULT_WIDTHS`, else 1."""
    return DEFAULT_WIDTHS.get(arch, 1.0)


def build_model(
    arch: str, *, num_classes: int, in_channels: int, input_size: int, width: float = 1.0
) -> nn.Module:
    """A freshly initialised classifier for ``[B, in_channels, input_size, input_size]`` inputs.

    ``arch``: ``"alexnet"``/``"vgg11"`` (ours) or a torchvision classifier name, optionally
    prefixed ``"torchvision."``. torchvision models get ``num_classes`` outputs and, when
    ``in_channels != 3``, a first conv with that many input channels; ``width`` must be 1 there.
    """
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{key} must be a positive integer, got {value!r}")
    if not isinstance(width, int | float) or not 0 < width <= 16:
        raise InputError(f"width must be in (0, 16], got {width!r}")
    if arch in OUR_ARCHS:
        if input_size < 2:
            raise InputError(f"input_size must be at least 2, got {input_size}")
        model_class = SmallAlexNet if arch == "alexnet" else SmallVGG11
        return model_class(num_classes, in_channels, input_size, float(width))
    if arch in VIT_ARCHS:
        return build_vit(
            arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size,
            width=float(width),
        )  # fmt: skip
    name = arch.removeprefix(TORCHVISION_PREFIX)
    known = torchvision_archs()
    if name not in known:
        close = difflib.get_close_matches(name, [*OUR_ARCHS, *VIT_ARCHS, *known], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(
            f"unknown architecture {arch!r}{hint}: use {', '.join((*OUR_ARCHS, *VIT_ARCHS))}, or a "
            "torchvision classifier such as resnet18 or mobilenet_v2 (torchvision.models.list_models())"
        )
    if width != 1.0:
        raise InputError(f"width applies to {', '.join(OUR_ARCHS)} only, not to {arch!r}")
    import torchvision.models

    model: nn.Module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _pair(values: tuple[int, ...]) -> tuple[int, int]:
    """A ``Conv2d``'s size attribute (typed as the N-d base's ``tuple[int, ...]``) as a pair."""
    first, second = values
    return first, second


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``nn.Conv2d`` for one with ``in_channels`` inputs, same otherwise."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    replacement = nn.Conv2d(
        in_channels,
        conv.out_channels,
        _pair(conv.kernel_size),
        stride=_pair(conv.stride),
        padding=conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        dilation=_pair(conv.dilation),
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    setattr(parent, attribute, replacement)
