"""CUDA paths: run where a GPU is present (skipped on CPU-only machines such as CI).

Each test compares the GPU result with the CPU one, so a GPU run checks the device handling of
the gating engine and DGR (batch = loop on the GPU, channels-last included).
"""

from __future__ import annotations

import pytest
import torch

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods.dgr import DGR, DGRConfig

from contract import check_batch_equals_loop
from toys import tiny_cnn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = torch.device("cuda")


@pytest.fixture
def setup() -> tuple[torch.nn.Module, torch.Tensor]:
    model = tiny_cnn().double()
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_dgr_on_cuda_matches_cpu_and_batch_equals_loop(setup, memory_format) -> None:
    model, x = setup
    config = DGRConfig(init="uniform", gamma=0.3, memory_format=memory_format)
    cpu = DGR(GatedModel.discover(model, x[:1]), config).optimise(x)
    model.to(DEVICE)
    try:
        gated = GatedModel.discover(model, x[:1].to(DEVICE))
        finder = DGR(gated, config)
        result = finder.optimise(x.to(DEVICE))
        assert torch.equal(result.best_iteration.cpu(), cpu.best_iteration)
        for name in cpu.gates:
            assert result.gates[name].device == gated.device
            torch.testing.assert_close(result.gates[name].cpu(), cpu.gates[name])
        check_batch_equals_loop(
            lambda xb, t: finder.optimise(xb, t).gates, x.to(DEVICE), atol=1e-9, rtol=1e-9
        )
        if DEVICE.type != "cpu":
            with pytest.raises(InputError, match="model is on"):
                finder.optimise(x)  # CPU inputs for a CUDA model
    finally:
        model.cpu()
