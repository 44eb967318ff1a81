"""Pathway finders: one interface (:class:`PathwayFinder`), one registry."""

from neuralpath.methods.base import (
    FinderOptions,
    PathwayFinder,
    build_finder,
    finder_names,
    register_finder,
)

__all__ = ["FinderOptions", "PathwayFinder", "build_finder", "finder_names", "register_finder"]
