"""Pathway finders: one interface (:class:`PathwayFinder`), one registry."""

from neuralpath.methods.base import (
    FinderOptions,
    PathwayFinder,
    build_finder,
    find_in_chunks,
    finder_names,
    register_finder,
)

__all__ = [
    "FinderOptions",
    "PathwayFinder",
    "build_finder",
    "find_in_chunks",
    "finder_names",
    "register_finder",
]
