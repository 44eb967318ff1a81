"""Artifact storage: atomic writes, JSON and safetensors files, bit-packed boolean tensors.

Artifacts are safetensors + JSON only; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from neuralpath.errors import CheckpointError

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def _file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would have given a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600; match a normally created file
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing file: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt JSON file {path}: {exc}") from exc


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``tensors`` to a safetensors file atomically; ``metadata`` is stored as JSON."""
    header = {"json": json.dumps(metadata)} if metadata is not None else None
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    write_bytes_atomic(path, st_save_bytes(contiguous, metadata=header))


def load_tensors(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a safetensors file written by :func:`save_tensors`: (tensors, metadata)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing file: {path}") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"expected a file, got a directory: {path}") from exc
    try:
        tensors = st_load_bytes(raw)
        header = _read_header(raw)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt or truncated safetensors file {path}: {exc}") from exc
    meta = header.get("__metadata__") or {}
    payload = json.loads(meta["json"]) if "json" in meta else None
    return tensors, payload


def load_artifact(
    path: str | os.PathLike[str], file_format: str, kind: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`load_tensors` for a file whose metadata names ``file_format``; raises
    :class:`CheckpointError` ("``path`` is not a neuralpath ``kind`` file") otherwise."""
    tensors, meta = load_tensors(path)
    if not isinstance(meta, dict) or meta.get("format") != file_format:
        raise CheckpointError(f"{path} is not a neuralpath {kind} file")
    return tensors, meta


def _read_header(raw: bytes) -> dict[str, Any]:
    if len(raw) < 8:
        raise ValueError("file shorter than the 8-byte header length")
    size = int.from_bytes(raw[:8], "little")
    if 8 + size > len(raw):
        raise ValueError("header runs past the end of the file")
    header = json.loads(raw[8 : 8 + size].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header


def state_digest(
    module: torch.nn.Module, *, shape_as: Callable[[torch.Size], object] = list
) -> str:
    """SHA-256 (hex) of ``module``'s state: every parameter's and buffer's name, dtype, shape and
    values. Equal digests mean equal weights; caches keyed by it go stale when the model changes.

    ``shape_as``: how each shape is written into the hash (``[3, 4]`` or ``(3, 4)``); GEN-CNP
    checkpoints store the tuple form, everything else the list form, so stored digests stay valid.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{shape_as(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor into ``uint8`` (8 values a byte, big-endian bit order), flattened."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = _BIT_WEIGHTS.to(flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a boolean tensor of ``shape``."""
    numel = 1
    for size in shape:
        numel *= size
    if packed.dtype != torch.uint8 or packed.numel() * 8 < numel or packed.numel() * 8 - numel >= 8:
        raise CheckpointError(f"packed mask of {packed.numel()} bytes cannot hold shape {shape}")
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.view(-1, 1) & weights) != 0
    return bits.reshape(-1)[:numel].reshape(shape)
