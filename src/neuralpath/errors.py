"""Exception types. Every error neuralpath raises on bad input is a :class:`NeuralpathError`.

The CLI turns these into a one-line message and a non-zero exit code, without a traceback.
"""

from __future__ import annotations

import math


class NeuralpathError(Exception):
    """Base class of all errors raised by neuralpath on bad input or bad files."""


class InputError(NeuralpathError, ValueError):
    """An argument has the wrong shape, dtype, range or value (NaN inputs, bad sparsity, ...)."""


class LayerError(NeuralpathError, ValueError):
    """A layer name or type is unknown, or the model has no gateable layers."""


class ShapeError(NeuralpathError, ValueError):
    """Masks, scores or pathways do not match the gated layers or each other."""


class CheckpointError(NeuralpathError):
    """A checkpoint or artifact file is missing, truncated, corrupt or for another model."""


class DataError(NeuralpathError):
    """A data set is unknown, missing from disk, or malformed."""


def check_non_negative(value: object, what: str) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite int or float ``>= 0`` (not a bool);
    ``what`` names it in the message."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InputError(f"{what} must be a finite number >= 0, got {value!r}")


class ZeroMapsWarning(UserWarning):
    """Some attribution maps are zero everywhere (e.g. their pathways empty a whole layer)."""


class LeakageWarning(UserWarning):
    """Pathway models follow the mask rather than the input (see :mod:`neuralpath.metrics.leakage`)."""


class DisconnectedWarning(UserWarning):
    """Some pathways disconnect the network: their pathway model's output does not depend on the
    input (see :mod:`neuralpath.metrics.connectivity`)."""
