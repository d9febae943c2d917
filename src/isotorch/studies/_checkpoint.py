"""Atomic checkpoint files and RNG-state capture.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then moved over the old one
with ``os.replace`` (atomic on POSIX and Windows), and the folder is fsynced: a crash at any moment leaves either
the previous checkpoint or the new one, never a torn file. A file that cannot be read raises
:class:`CheckpointError` naming it; nothing is ever deleted.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "capture_rng", "load_checkpoint", "restore_rng", "save_atomic", "write_text_atomic"]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not hold what the runner expects."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temp file in the same folder + fsync + ``os.replace``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_bytes_atomic(Path(path), buffer.getvalue())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    _write_bytes_atomic(Path(path), text.encode())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic`.

    Raises:
        CheckpointError: the file is unreadable, truncated, corrupted, or not a checkpoint dict (names the file).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or unreadable ({type(exc).__name__}: {exc}); it was left in place. "
            "Move it away to restart this seed from its previous checkpoint-free state, or start a new run folder."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != "isotorch-study-checkpoint":
        raise CheckpointError(f"{path} is not an isotorch study checkpoint; it was left in place")
    return state


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The state of python's, numpy's and torch's global RNGs (and CUDA's), plus the given generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the legacy global RNG that user code may use
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`capture_rng` captured (generators by name)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
