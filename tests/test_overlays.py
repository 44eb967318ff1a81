"""save_overlays: readable PNG overlays of 224×224 and small images (issue 15)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg

from neuralpath.attribution import save_overlays, signed_max_abs


@pytest.mark.parametrize(("side", "corner", "square"), [(224, 80, 64), (28, 10, 8)])
def test_a_concentrated_map_stands_out(tmp_path: Path, side: int, corner: int, square: int) -> None:
    """A map concentrated in a square, with small noise elsewhere and one extreme pixel (as plain
    gradients have), over a grey image: the PNG shows the square in strong colour and leaves
    the rest near grey (scaled by the maximum, the square would be 1 % of full colour). Inputs
    that require grad are fine."""
    generator = torch.Generator().manual_seed(0)
    grey = torch.rand(2, 1, side, side, generator=generator).expand(2, 3, side, side)
    maps = 0.01 * torch.randn(2, side, side, generator=generator)
    maps[0, corner : corner + square, corner : corner + square] += 1.0
    maps[0, 2, side - 3] = 100.0
    maps[1] = 0.0  # an all-zero map leaves the image grey
    display = signed_max_abs(maps[:, None])  # as `neuralpath attribute` passes them
    paths = save_overlays(
        grey.clone().requires_grad_(True), display.requires_grad_(True), tmp_path, ["a", "b"]
    )
    assert [p.name for p in paths] == ["00000.png", "00001.png"]
    png = mpimg.imread(paths[0])[..., :3]
    chroma = png.max(axis=2) - png.min(axis=2)  # 0 for grey pixels
    strong = chroma > 0.5
    drawn = square * round(224 / side)  # small images are enlarged to about 224 px
    rows = np.flatnonzero(strong.sum(axis=1) > drawn // 2)
    cols = np.flatnonzero(strong.sum(axis=0) > drawn // 2)
    assert rows.size and cols.size, "no coloured square in the overlay"
    box = np.zeros_like(strong)
    box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    assert abs(rows.size - drawn) <= 2 and abs(cols.size - drawn) <= 2
    assert strong[box].mean() > 0.95
    assert chroma[box].mean() - chroma[~box].mean() > 0.6
    assert (chroma[~box] > 0.5).sum() < 0.001 * (~box).sum()  # the extreme pixel, at most
    blank = mpimg.imread(paths[1])[..., :3]
    assert (blank.max(axis=2) - blank.min(axis=2)).max() < 0.02
