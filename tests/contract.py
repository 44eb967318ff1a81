"""The shared contract every method must pass (Captum-style shared test cases).

A *method under test* is a callable ``run(inputs, target) -> Tensor | Pathway`` built on a
:class:`~neuralpath.gating.GatedModel`. Each method's test module calls these checks:

* :func:`check_leaves_model_unchanged`: no hook left, parameters/buffers bit-identical, every
  module's ``training`` flag and every parameter's ``requires_grad`` restored;
* :func:`check_cleans_up_after_raise`: same, when the model's forward raises mid-way;
* :func:`check_batch_equals_loop`: running a batch equals running each sample alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from neuralpath.pathway import Pathway

Run = Callable[[Tensor, Any], Any]

LEAKAGE_KEYS = frozenset(
    {
        "ablation",
        "blank_agreement",
        "blank_agreement_plain",
        "swap_follows_input",
        "swap_follows_mask",
        "swap_n",
        "input_attributable_confidence",
        "disconnected",
        "disconnected_n",
        "repaired_n",
    }
)
"""The leakage keys of the ``find``/``extract``/``compare`` JSON contract (issue 13)."""


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything about ``model`` that neuralpath must never change."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "hooks": hook_count(model),
        "grads": {name: p.grad for name, p in model.named_parameters()},
    }


def hook_count(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
        ):
            total += len(getattr(module, attr, {}))
    return total


def assert_unchanged(model: nn.Module, before: Mapping[str, Any]) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"], "hooks were left on the model"
    assert after["training"] == before["training"], "training flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    for name, grad in after["grads"].items():
        assert grad is None or before["grads"][name] is not None, f"{name}.grad was populated"


def check_leaves_model_unchanged(
    model: nn.Module, run: Run, inputs: Tensor, target: Any = None
) -> None:
    """Run once in train mode with mixed requires_grad, once in eval mode; nothing may change."""
    for training in (True, False):
        model.train(training)
        params = list(model.parameters())
        if params:
            params[0].requires_grad_(False)
        before = snapshot(model)
        run(inputs, target)
        assert_unchanged(model, before)
        for p in params:
            p.requires_grad_(True)
    model.eval()


class _Boom(RuntimeError):
    pass


def check_cleans_up_after_raise(
    model: nn.Module, layer: nn.Module, run: Run, inputs: Tensor
) -> None:
    """Make ``layer`` raise during the forward; the method must propagate it and clean up."""
    before = snapshot(model)

    def explode(*_args: Any) -> None:
        raise _Boom("forward failed on purpose")

    handle = layer.register_forward_hook(explode)
    before["hooks"] += 1
    try:
        try:
            run(inputs, None)
        except _Boom:
            pass
        else:  # pragma: no cover - a method that swallows errors is itself a failure
            raise AssertionError("the error raised in the forward was swallowed")
        assert_unchanged(model, before)
    finally:
        handle.remove()


def _as_tensors(result: Any) -> dict[str, Tensor]:
    if isinstance(result, Pathway):
        return {name: result[name] for name in result}
    if isinstance(result, Tensor):
        return {"": result}
    raise TypeError(f"cannot compare results of type {type(result).__name__}")


def check_batch_equals_loop(
    run: Run, inputs: Tensor, target: Any = None, *, atol: float = 1e-5, rtol: float = 1e-4
) -> None:
    """``run(batch)`` equals stacking ``run(sample)`` over the batch."""
    batched = _as_tensors(run(inputs, target))
    singles = []
    for i in range(inputs.shape[0]):
        t = target[i : i + 1] if isinstance(target, Tensor) else target
        singles.append(_as_tensors(run(inputs[i : i + 1], t)))
    for name, value in batched.items():
        looped = torch.cat([s[name] for s in singles])
        if value.dtype == torch.bool:
            assert torch.equal(value, looped), f"batch != loop for {name!r}"
        else:
            torch.testing.assert_close(
                value, looped, atol=atol, rtol=rtol, msg=f"batch != loop for {name!r}"
            )
