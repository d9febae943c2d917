"""Atomic, checksummed checkpoint files and RNG-state capture.

A file is written to a temporary file in the same folder, flushed and fsynced, then moved over the old one with
``os.replace`` (atomic on POSIX and Windows), and the folder is fsynced: a crash at any moment leaves either the
previous file or the new one, never a torn file.

A checkpoint (:func:`save_checkpoint`) is a header line ``isotorch-checkpoint-v1 <sha256 of the payload>`` followed
by the ``torch.save`` payload. :func:`load_checkpoint` verifies the digest before unpickling anything, so a flipped
byte anywhere in the file (header or payload) is refused; the error names the file, which is left in place.
Nothing is ever deleted.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "capture_rng",
    "encode_checkpoint",
    "load_checkpoint",
    "restore_rng",
    "save_atomic",
    "save_checkpoint",
    "write_bytes_atomic",
    "write_text_atomic",
]

_MAGIC = b"isotorch-checkpoint-v1 "
_HEADER = len(_MAGIC) + 64 + 1  # magic, hex digest, newline


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


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + fsync + ``os.replace``)."""
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
    write_bytes_atomic(Path(path), buffer.getvalue())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    write_bytes_atomic(Path(path), text.encode())


def encode_checkpoint(obj: Any) -> bytes:
    """The bytes of a checksummed checkpoint of ``obj`` (header line with the payload's SHA-256, then the payload).

    Encoding captures ``obj`` by value: the objects may change afterwards; write the bytes later with
    :func:`write_bytes_atomic`.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    return _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Save ``obj`` atomically as a checksummed checkpoint (see :func:`load_checkpoint`)."""
    write_bytes_atomic(path, encode_checkpoint(obj))


def load_checkpoint(path: str | Path, *, expect_format: str | None = "isotorch-study-checkpoint") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, after verifying its SHA-256.

    Args:
        path: the file.
        expect_format: the dict's ``"format"`` entry must equal this (``None``: any dict).

    Raises:
        CheckpointError: missing, unreadable, truncated, corrupted (checksum mismatch) or not a checkpoint dict; the
            message names the file and says that it was left in place.
    """
    path = Path(path)
    kept = "it was left in place. Move it away to rerun that part from its start, or use a new run folder."
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from None
    header, payload = raw[:_HEADER], raw[_HEADER:]
    if not (header.startswith(_MAGIC) and header.endswith(b"\n")):
        raise CheckpointError(
            f"checkpoint {path} is corrupted or not an isotorch checkpoint (bad header; files written before "
            f"checksums were added are refused too); {kept}"
        )
    stored = header[len(_MAGIC) : -1]
    actual = hashlib.sha256(payload).hexdigest().encode()
    if stored != actual:
        raise CheckpointError(
            f"checkpoint {path} is corrupted (SHA-256 {actual[:12].decode(errors='replace')}… does not match the "
            f"stored {stored[:12].decode(errors='replace')}…); {kept}"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); {kept}") from exc
    if not isinstance(state, dict) or (expect_format is not None and state.get("format") != expect_format):
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
