"""neuralpath: explain PyTorch image classifiers through neural pathways.

The public names below load on first use, so ``import neuralpath`` (and ``neuralpath --help``)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "NeuralpathError": "neuralpath.errors",
    "Target": "neuralpath.checkpoint",
    "load_target": "neuralpath.checkpoint",
    "ModelCard": "neuralpath.model_source",
    "open_model": "neuralpath.model_source",
    "GateSite": "neuralpath.gating",
    "GatedModel": "neuralpath.gating",
    "discover_sites": "neuralpath.gating",
    "frozen": "neuralpath.gating",
    "FinderOptions": "neuralpath.methods",
    "PathwayFinder": "neuralpath.methods",
    "build_finder": "neuralpath.methods",
    "find_in_chunks": "neuralpath.methods",
    "finder_names": "neuralpath.methods",
    "ClassPathways": "neuralpath.pathway",
    "Pathway": "neuralpath.pathway",
    "aggregate_by_class": "neuralpath.pathway",
    "global_percentile": "neuralpath.pathway",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neuralpath' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
