"""Matplotlib figures of a study, each returned as PNG bytes (Agg backend, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _image(ax: Axes, picture: Tensor) -> None:
    """Show ``[C, H, W]`` in [0, 1] (grey for one channel)."""
    if picture.shape[0] == 1:
        ax.imshow(picture[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_axis_off()


def sample_panel(
    image: Tensor, maps: Mapping[str, tuple[Tensor, Tensor | None]], title: str
) -> bytes:
    """One sample: its image, then per method its Pathway Gradient (signed, top row) and
    Grad-CAM of the pathway model (bottom row; the image alone where the model has no spatial
    gate site: None). ``image`` ``[C, H, W]`` in [0, 1]; maps ``[H, W]``. An all-zero gradient
    map (a pathway that passes nothing) is labelled as such.
    """
    columns = 1 + len(maps)
    fig, axes = plt.subplots(2, columns, figsize=(1.6 * columns, 3.4), squeeze=False)
    _image(axes[0, 0], image)
    axes[0, 0].set_title("input", fontsize=8)
    axes[1, 0].set_axis_off()
    for col, (method, (gradient, cam)) in enumerate(maps.items(), start=1):
        axes[0, col].imshow(gradient.numpy(), cmap="bwr", vmin=-1, vmax=1)
        axes[0, col].set_title(method, fontsize=8)
        if not bool(gradient.any()):
            axes[0, col].text(
                0.5, 0.5, "all zero:\nnothing\npasses", transform=axes[0, col].transAxes,
                ha="center", va="center", fontsize=7,
            )  # fmt: skip
        _image(axes[1, col], image)
        if cam is not None:
            axes[1, col].imshow(cam.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[0, col].set_axis_off()
    axes[1, 0].text(
        0.5,
        0.5,
        "top row:\nPathway Gradient\n(signed max-abs)\n\nbottom row:\nGrad-CAM on H_P"
        + ("" if any(cam is not None for _, cam in maps.values()) else "\n(none: no\nCAM site)"),
        transform=axes[1, 0].transAxes,
        ha="center",
        va="center",
        fontsize=7,
    )
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def layer_profile(kept_per_layer: Mapping[str, Sequence[float]], layers: Sequence[str]) -> bytes:
    """Mean fraction of units kept in each gated layer, one line per method."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for method, values in kept_per_layer.items():
        ax.plot(range(len(layers)), values, marker="o", label=method)
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("units kept (fraction)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def class_pathways(
    frequency: Tensor,
    layer_sizes: Sequence[int],
    layers: Sequence[str],
    class_names: Sequence[str],
    method: str,
    theta: float,
) -> bytes:
    """Class x unit picture: firing frequency of every unit (all layers side by side) per class;
    units at or above ``theta`` form the class pathway."""
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(class_names) + 1.2))
    shown = ax.imshow(
        frequency.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    edge = 0
    for size in layer_sizes[:-1]:
        edge += size
        ax.axvline(edge - 0.5, color="white", linewidth=0.6)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    starts = [sum(layer_sizes[:i]) + layer_sizes[i] / 2 for i in range(len(layers))]
    ax.set_xticks(starts, layers, rotation=45, ha="right", fontsize=6)
    ax.set_title(
        f"{method}: firing frequency per class (class pathway = frequency ≥ {theta})", fontsize=9
    )
    fig.colorbar(shown, ax=ax, fraction=0.02)
    return _png(fig)


def overlap(matrix: Tensor, methods: Sequence[str]) -> bytes:
    """Mean Jaccard index between the pathways of every pair of methods (same samples)."""
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(methods), 0.8 + 0.6 * len(methods)))
    shown = ax.imshow(matrix.numpy(), cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    for i in range(len(methods)):
        for j in range(len(methods)):
            value = float(matrix[i, j])
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > 0.6 else "white",
            )
    fig.colorbar(shown, ax=ax, fraction=0.04)
    return _png(fig)


def sparsity_distribution(kept: Mapping[str, Tensor]) -> bytes:
    """Per-sample kept fraction of each method: instance-specific methods spread, fixed ones spike."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(kept)
    ax.boxplot([kept[n].numpy() for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("kept fraction per sample")
    ax.grid(alpha=0.3)
    return _png(fig)


def frontier(points: Sequence[Mapping[str, float]]) -> bytes:
    """GEN-CNP trade-off: kept fraction against mDC and acIOU, one point per alpha."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    kept = [p["kept_fraction_mean"] for p in points]
    for ax, key, label in ((left, "mdc", "mDC (%) ↓"), (right, "aciou", "acIOU (%) ↑")):
        ax.plot(kept, [p[key] for p in points], marker="o")
        for p in points:
            ax.annotate(f"α={p['alpha']:g}", (p["kept_fraction_mean"], p[key]), fontsize=7)
        ax.set_xlabel("kept fraction (mean)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return _png(fig)
