"""Pathway finders: one interface (:class:`PathwayFinder`), typed settings, one registry."""

from neuralpath.methods.base import (
    COMMON_KEYS,
    FinderConfig,
    FinderOptions,
    PathwayFinder,
    build_finder,
    config_from_settings,
    find_in_chunks,
    finder_entry,
    finder_names,
    register_finder,
    settings_help,
)

__all__ = [
    "COMMON_KEYS",
    "FinderConfig",
    "FinderOptions",
    "PathwayFinder",
    "build_finder",
    "config_from_settings",
    "find_in_chunks",
    "finder_entry",
    "finder_names",
    "register_finder",
    "settings_help",
]
