"""Shared pytest set-up: deterministic, single-threaded torch and importable test helpers."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, int(os.environ.get("NEURALPATH_TEST_THREADS", "1"))))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
