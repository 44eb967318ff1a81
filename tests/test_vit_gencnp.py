"""GEN-CNP's token RFE (``rfe="token"``) on a vision transformer's heads and MLP neurons: equal to
a literal float64 re-implementation, sensitive to the token layout (the pooled MLP RFE is not),
and a batch equals a loop (stored and rebuilt through the CLI: tests/test_vit_cli.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods.gencnp import GeneratorConfig, PathwayGenerator
from neuralpath.methods.gencnp.generator import MlpRFE, TokenRFE

SMALL = GeneratorConfig(width=8, rfe_width=4, heads=2, resolution=2, rfe="token")


def _vit() -> tuple[GatedModel, Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=6,
        num_classes=3,
    ).double().eval()  # fmt: skip
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"]), x


def _features(gated: GatedModel, x: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        return gated.record(x)[1].activations


def test_token_rfe_equals_its_literal_reimplementation() -> None:
    """Heads ``[B, T=5, H=2, d=4]`` -> per-token features of 8, embedded, pooled to 2 groups
    (AdaptiveAvgPool1d over 5 tokens: tokens 0-2 and 2-4), flattened, mapped to the token."""
    torch.manual_seed(2)
    rfe = TokenRFE((5, 2, 4), unit_dim=1, groups=2, hidden=3, width=6).double()
    heads = torch.randn(2, 5, 2, 4, dtype=torch.float64)
    linear, norm = rfe.embed[0], rfe.embed[1]
    expected = []
    for sample in heads:
        tokens = sample.reshape(5, 8)
        embedded = torch.relu(
            F.layer_norm(tokens @ linear.weight.T + linear.bias, (3,), norm.weight, norm.bias)
        )
        groups = torch.stack([embedded[0:3].mean(0), embedded[2:5].mean(0)], dim=1)  # [3, 2]
        expected.append(rfe.token.weight @ groups.reshape(-1) + rfe.token.bias)
    torch.testing.assert_close(rfe(heads), torch.stack(expected), rtol=1e-12, atol=1e-14)


def test_generator_with_token_rfe_reads_the_token_layout_and_batch_equals_loop() -> None:
    gated, x = _vit()
    torch.manual_seed(3)
    generator = PathwayGenerator(gated.sites, SMALL).double().eval()
    assert all(isinstance(rfe, TokenRFE) for rfe in generator.rfe)
    pooled = PathwayGenerator(gated.sites, GeneratorConfig(width=8, rfe_width=4, heads=2))
    assert all(isinstance(rfe, MlpRFE) for rfe in pooled.rfe)
    features = _features(gated, x)
    with torch.no_grad():
        out = generator(features)
        for name, site in zip(generator.site_names, gated.sites, strict=True):
            assert out.masks[name].shape == (3, site.units)
        for i in range(3):
            single = generator({k: v[i : i + 1] for k, v in features.items()})
            for name in generator.site_names:
                torch.testing.assert_close(single.scores[name], out.scores[name][i : i + 1])
        # reversing the token order changes what the token RFE sees, not the pooled MLP RFE
        site = gated.sites[0]
        flipped = features[site.name].flip(1)
        token_rfe, mlp_rfe = generator.rfe[0], pooled.rfe[0].double()
        assert not torch.allclose(token_rfe(flipped), token_rfe(features[site.name]))
        moved = (features[site.name].movedim(2, 1), flipped.movedim(2, 1))
        torch.testing.assert_close(mlp_rfe(moved[1]), mlp_rfe(moved[0]))


def test_token_rfe_errors() -> None:
    with pytest.raises(InputError, match="rfe must be 'conv', 'mlp' or 'token'"):
        GeneratorConfig(rfe="tokens")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="token dimensions before the units"):
        TokenRFE((4, 3, 3), unit_dim=0, groups=2, hidden=2, width=2)
