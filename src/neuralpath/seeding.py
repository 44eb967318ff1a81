"""Per-sample seeds that do not depend on how a data set is split into batches."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def sample_seed(seed: int, sample: Tensor) -> int:
    """A 63-bit seed from ``seed`` and the bytes of ``sample`` (in its logical order, whatever
    its layout or device): equal samples get equal seeds wherever they stand in a batch."""
    values = sample.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    digest = hashlib.blake2b(values, digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_seeds(seed: int, batch: Tensor) -> list[int]:
    """:func:`sample_seed` of every row of ``batch`` ``[B, ...]`` (one CPU copy of the batch)."""
    rows = batch.detach().cpu()
    return [sample_seed(seed, row) for row in rows]
