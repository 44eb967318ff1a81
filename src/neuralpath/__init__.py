"""neuralpath: explain PyTorch image classifiers through neural pathways."""

__version__ = "0.1.0"

from neuralpath.errors import NeuralpathError
from neuralpath.gating import GatedModel, GateSite, discover_sites, frozen
from neuralpath.methods import FinderOptions, PathwayFinder, build_finder, finder_names
from neuralpath.pathway import ClassPathways, Pathway, aggregate_by_class, global_percentile

__all__ = [
    "ClassPathways",
    "FinderOptions",
    "GateSite",
    "GatedModel",
    "NeuralpathError",
    "Pathway",
    "PathwayFinder",
    "aggregate_by_class",
    "build_finder",
    "discover_sites",
    "finder_names",
    "frozen",
    "global_percentile",
]
