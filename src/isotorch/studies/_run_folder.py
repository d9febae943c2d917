"""The run folder of a study: its layout, the metrics file, reading a run back, environment.

Run folder layout (``out/``)::

    config.json            study, preset, config, seeds, the study's configurations, the folder layout version,
                           runner settings and the environment
    metrics/U.jsonl        the live log of unit U: one JSON record per logged step {"seed", "run", "step", ...}
    metrics.jsonl          the records of every finished seed, in the order of the run's seeds (and configurations)
    results.json           {seed: final results} of the finished seeds (Study.run's, joined by Study.combine)
    checkpoints/U.pt       one atomic, checksummed checkpoint per unit (the interrupted loop's state; an index of
                           the finished loops; at the end the unit's final results)
    checkpoints/U-loopK.pt the end state of the unit's K-th finished training loop (written once)
    models/                models saved with ctx.save_model (audited by the report)
    findings.json          the study's findings tables; figures.json: its figures and captions
    verdicts.json          one verdict per claim the study tests (supported/contradicted/inconclusive, estimate, ci95)
    *.png, report.html     figures and the report
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isotorch._util import dumps
from isotorch.studies._config import config_from_dict
from isotorch.studies._registry import get

__all__ = ["RunData", "RunFolderError", "environment", "file_name"]


class RunFolderError(RuntimeError):
    """The output folder cannot be used: it exists and is not empty (without resume), is not writable, etc."""


def environment() -> dict[str, Any]:
    """Versions, platform and threading of this process (recorded in ``config.json``)."""
    import isotorch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "isotorch": getattr(isotorch, "__version__", "unknown"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for env_var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if env_var in os.environ:
            env[env_var] = os.environ[env_var]
    return env


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


class _Metrics:
    """The append-only metrics file, its byte offset and optional TensorBoard mirror."""

    def __init__(self, path: Path, tensorboard_dir: Path | None):
        self.path = path
        self.handle = path.open("ab")
        self.writers: dict[int, Any] = {}
        self.tensorboard_dir = tensorboard_dir

    def write(self, record: Mapping[str, Any]) -> None:
        self.handle.write((dumps(record) + "\n").encode())
        if self.tensorboard_dir is not None:
            self._tensorboard(record)

    def _tensorboard(self, record: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        seed = record["seed"]
        assert self.tensorboard_dir is not None  # called only when TensorBoard logging is on
        if seed not in self.writers:
            self.writers[seed] = SummaryWriter(log_dir=str(self.tensorboard_dir / f"seed{seed}"))
        prefix = f"{record['run']}/" if record.get("run") else ""
        for key, value in record.items():
            if key not in ("seed", "step", "run") and isinstance(value, int | float) and not isinstance(value, bool):
                self.writers[seed].add_scalar(prefix + key, value, record["step"])

    def sync(self) -> int:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self.handle.tell()

    def close(self) -> None:
        self.handle.close()
        for writer in self.writers.values():
            writer.close()


@dataclass
class RunData:
    """A run folder read back: config, seeds, every metrics record and the per-seed final results.

    Attributes:
        out: the run folder.
        study: the study's name.
        config: the study's config object.
        seeds: the seeds of the run.
        records: every record of ``metrics.jsonl``, in order.
        finals: ``{seed: results returned by Study.run}`` for the seeds that finished.
    """

    out: Path
    study: str
    config: Any
    seeds: tuple[int, ...]
    records: list[dict[str, Any]]
    finals: dict[int, dict[str, Any]]

    @classmethod
    def load(cls, out: str | Path) -> RunData:
        """Read a run folder (``config.json``, ``metrics.jsonl``, ``results.json``)."""
        out = Path(out)
        meta = _read_json(out / "config.json")
        study = get(meta["study"])
        config = config_from_dict(study.Config, meta["config"])
        records = _read_records(out / "metrics.jsonl")
        finals = {}
        if (out / "results.json").exists():
            finals = {int(k): v for k, v in _read_json(out / "results.json").items()}
        return cls(out, meta["study"], config, tuple(meta["seeds"]), records, finals)

    def select(self, **match: Any) -> list[dict[str, Any]]:
        """The records whose fields equal every ``match`` (e.g. ``select(seed=0, run="scale=0.1")``)."""
        return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]

    def runs(self) -> list[str]:
        """The distinct ``run`` keys, in order of first appearance."""
        return list(dict.fromkeys(r["run"] for r in self.records if r.get("run") is not None))

    def series(self, key: str, **match: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the selected records that have ``key`` (values as float)."""
        rows = [r for r in self.select(**match) if key in r and r[key] is not None]
        steps = np.array([r["step"] for r in rows], dtype=np.int64)
        return steps, np.array([r[key] for r in rows], dtype=np.float64)


def _read_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON records of a metrics file (the first ``limit`` bytes); a malformed line is a RunFolderError."""
    if not path.exists():
        return []
    with path.open("rb") as handle:
        raw = handle.read() if limit is None else handle.read(limit)
    records = []
    for number, line in enumerate(raw.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{path} line {number} is not valid JSON ({exc.msg}): {line[:60]!r}") from None
        if not isinstance(record, dict):
            raise RunFolderError(f"{path} line {number} is not a JSON object: {line[:60]!r}")
        records.append(record)
    return records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path} does not exist: is {path.parent} a study run folder?") from None
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path} is not valid JSON ({exc})") from None


def _check_folder(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output path {out} exists and is not a folder")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise RunFolderError(f"output folder {out} cannot be created: {parent} is a file")
    if resume:
        if not (out / "config.json").exists():
            raise RunFolderError(f"cannot resume: {out} holds no config.json (not a study run folder)")
    elif out.exists() and any(out.iterdir()):
        raise RunFolderError(
            f"output folder {out} exists and is not empty; pass --resume to continue that run, or choose a new folder"
        )
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()  # the empty folder that this call made
        raise RunFolderError(f"output folder {out} is not writable ({exc.strerror or exc})") from None
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "metrics").mkdir(exist_ok=True)


_LAYOUT = 2  # config.json "layout": 2 = a unit per (seed, configuration); absent = one unit per seed (refused)


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]")


def file_name(configuration: str) -> str:
    """The file-name part of a configuration: characters other than letters, digits and ``._=+,-`` become ``_``."""
    return _UNSAFE.sub("_", configuration)
