"""Generator checkpoints: a directory with ``generator.safetensors``, ``train_state.safetensors``
and ``meta.json``.

* ``generator.safetensors``: the generator's weights;
* ``train_state.safetensors``: Adam's state tensors (``optim/<param index>/<key>``) and the RNG
  states (``rng/torch``, ``rng/cuda``) — only needed to resume training;
* ``meta.json``: format, generator config, fit config, the identity of the target (gate sites
  with shapes, model class, a SHA-256 fingerprint of its weights, and the target checkpoint's
  ``meta.json`` when known), the intervention the masks were trained under (``ablation``: its
  ``describe()``; absent in older checkpoints, which were trained under zero ablation), the blank
  baseline, data, epochs done, Adam's hyper-parameters, per-epoch history.

Files are written atomically, ``meta.json`` last: a directory whose ``meta.json`` names epoch
``e`` holds the complete state after epoch ``e``. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuralpath.errors import CheckpointError, InputError
from neuralpath.gating import GatedModel, GateSite
from neuralpath.io import load_tensors, read_json, save_tensors, state_digest, write_json_atomic
from neuralpath.methods.gencnp.generator import GeneratorConfig, PathwayGenerator

FORMAT = "neuralpath.gencnp-generator"
VERSION = 1
GENERATOR_FILE = "generator.safetensors"
STATE_FILE = "train_state.safetensors"
META_FILE = "meta.json"


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``model``'s state dict
    (:func:`~neuralpath.io.state_digest` with shapes written as tuples, as stored checkpoints
    hold it)."""
    return state_digest(model, shape_as=tuple)


def target_identity(
    gated: GatedModel, target_meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a generator is tied to: gate sites (name, shape), model class, weights fingerprint."""
    return {
        "sites": [
            {
                "name": s.name,
                "module_name": s.module_name,
                "call_index": s.call_index,
                "shape": list(s.shape),
                "kind": s.kind,
                "unit_dim": s.unit_dim,
                "feature_dims": s.feature_dims,
            }
            for s in gated.sites
        ],
        "model_class": type(gated.model).__name__,
        "weights_sha256": weights_fingerprint(gated.model),
        "target_meta": dict(target_meta) if target_meta is not None else None,
    }


def check_identity(
    stored: Mapping[str, Any], gated: GatedModel, source: str, *, same_weights: bool = True
) -> None:
    """Raise :class:`CheckpointError` naming the mismatch unless ``gated`` is the stored target.

    Layer names and widths must match; with ``same_weights`` the weights fingerprint too.
    """
    saved = [(s["name"], tuple(s["shape"])) for s in stored["sites"]]
    current = [(s.name, s.shape) for s in gated.sites]
    if [n for n, _ in saved] != [n for n, _ in current]:
        raise CheckpointError(
            f"{source}: the generator was trained for gated layers {[n for n, _ in saved]}, "
            f"the target has {[n for n, _ in current]}"
        )
    for (name, shape), (_, now) in zip(saved, current, strict=True):
        if shape != now:
            raise CheckpointError(
                f"{source}: layer {name!r} has shape {list(shape)} in the generator's target, "
                f"{list(now)} in this target (units {shape[0]} vs {now[0]})"
            )
    if same_weights and stored.get("weights_sha256") != weights_fingerprint(gated.model):
        raise CheckpointError(
            f"{source}: the generator was trained for another target: same layers, different "
            f"weights (fingerprint {str(stored.get('weights_sha256'))[:12]}... differs; to explain "
            "a deliberately changed copy, e.g. in a sanity check, pass verify_weights=False)"
        )


def sites_from_identity(identity: Mapping[str, Any]) -> list[GateSite]:
    """The gate sites of a stored identity (``unit_dim``/``feature_dims`` 0 where a generator
    saved before they were recorded: channels-first sites)."""
    return [
        GateSite(
            s["name"],
            s["module_name"],
            int(s["call_index"]),
            tuple(int(v) for v in s["shape"]),
            s["kind"],
            int(s.get("unit_dim", 0)),
            int(s.get("feature_dims", 0)),
        )
        for s in identity["sites"]
    ]


def save_checkpoint(
    directory: str | os.PathLike[str],
    generator: PathwayGenerator,
    meta: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write the generator (and, with ``optimizer``, the resumable training state) + meta.json."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"cannot write a generator checkpoint into {path}: not a directory")
    path.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **meta}
    if optimizer is not None:
        tensors, plain = _optimizer_tensors(optimizer)
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        save_tensors(path / STATE_FILE, tensors, {"format": FORMAT, "optimizer": plain})
    save_tensors(path / GENERATOR_FILE, generator.state_dict(), {"format": FORMAT})
    write_json_atomic(path / META_FILE, payload)
    return path


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value
            else:
                plain["state"].setdefault(str(index), {})[key] = value
    return tensors, plain


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``meta.json`` of a generator directory."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"generator directory not found: {path}")
    meta = read_json(path / META_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / META_FILE} is not a GEN-CNP generator checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path / META_FILE}: unsupported version {meta.get('version')!r}")
    for key in ("generator_config", "target"):
        if key not in meta:
            raise CheckpointError(f"{path / META_FILE}: missing field {key!r}")
    return meta


def training_ablation(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The intervention a generator was trained under, as recorded in its ``meta.json``
    (``{"ablation": "zero" | "mean" | "resample", ...}``); zero for checkpoints from before it
    was recorded."""
    return dict(meta.get("ablation") or {"ablation": "zero"})


@dataclass
class LoadedGenerator:
    """A generator read back from a directory, with its ``meta.json``."""

    generator: PathwayGenerator
    meta: dict[str, Any]

    @property
    def ablation(self) -> str:
        """Name of the intervention the generator was trained under (see
        :func:`training_ablation`)."""
        return str(training_ablation(self.meta)["ablation"])


def load_generator(
    directory: str | os.PathLike[str],
    gated: GatedModel | None = None,
    *,
    device: str | torch.device | None = None,
    same_weights: bool = True,
) -> LoadedGenerator:
    """Rebuild the generator saved in ``directory`` (eval mode).

    With ``gated``, the checkpoint must be for that target (see :func:`check_identity`) and the
    generator is placed on its device. Raises :class:`CheckpointError` on any mismatch.
    """
    path = Path(directory)
    meta = read_meta(path)
    if gated is not None:
        check_identity(meta["target"], gated, str(path), same_weights=same_weights)
    try:
        config = GeneratorConfig.from_dict(meta["generator_config"])
        generator = PathwayGenerator(sites_from_identity(meta["target"]), config)
    except (InputError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / META_FILE}: cannot rebuild the generator: {exc}") from exc
    state, _ = load_tensors(path / GENERATOR_FILE)
    expected = generator.state_dict()
    bad = sorted(set(expected) ^ set(state)) + [
        k for k in expected if k in state and expected[k].shape != state[k].shape
    ]
    if bad:
        raise CheckpointError(f"{path / GENERATOR_FILE} does not fit its meta.json: {bad[:4]}")
    generator.load_state_dict(state)
    target_device = device if device is not None else (gated.device if gated is not None else "cpu")
    return LoadedGenerator(generator.to(target_device).eval(), meta)


def load_train_state(directory: str | os.PathLike[str], optimizer: torch.optim.Optimizer) -> None:
    """Restore Adam's state and the RNG states saved by :func:`save_checkpoint`."""
    path = Path(directory) / STATE_FILE
    tensors, header = load_tensors(path)
    if not header or header.get("format") != FORMAT or "optimizer" not in header:
        raise CheckpointError(f"{path} is not a GEN-CNP training state")
    plain = header["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entry in plain["state"].items():
        state.setdefault(int(index), {}).update(entry)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit the generator: {exc}") from exc
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
