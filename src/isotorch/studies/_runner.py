"""The study runner: output folder, config and environment, seeding, metrics, checkpoints, resume, Ctrl-C, Ray.

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

**Units.** A unit is a seed (file stem ``U = seedS``) or, for a study that declares its independent configurations
(:meth:`~isotorch.studies.Study.configurations`), a (seed, configuration) pair (``U = seedS-C``, C the
configuration's file name): ``Study.run(ctx)`` is called once per unit with ``ctx.configuration`` set. A unit
writes only its own metrics file and checkpoints, so units run one after another in this process
(``executor="serial"``) or as Ray tasks (``executor="ray"``, see :mod:`isotorch.studies._ray`) with the same
results. The driver keeps the bookkeeping: once every unit of a seed has finished it joins their results
(``Study.combine``) and rewrites ``results.json`` and ``metrics.jsonl`` from the finished seeds' files. A folder
written before configurations were units (no ``layout`` in ``config.json``) cannot be resumed (a one-line error).

**Resume.** ``Study.run(ctx)`` is called again from the top for an unfinished unit, with every RNG reseeded. Each
``ctx.train(key, ...)`` that had finished restores its end state (the objects in ``state``, every RNG, the log
count) instead of training; the one that was interrupted restores its last checkpoint and continues from its step.
``ctx.log`` calls that replay records already in the seed's metrics file are dropped, after the file is truncated
back to the checkpoint's offset. So a run killed at any moment (even by SIGKILL) and resumed writes exactly the
records, and ends with exactly the models, of an uninterrupted run — provided that ``run`` is deterministic given
the seed and that every stateful object of a training loop (models, optimisers, schedulers, scalers) is passed in
``state``. Resuming with more seeds adds them and keeps the finished ones (and their finished units).

**Checkpoints** are verified by their SHA-256 before loading (a corrupted file is refused, named and kept). A
checkpoint of a loop's state is written only once the loss *at that state* has been computed and is finite, so
after a NaN/inf the kept checkpoint is the last state with a finite loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import operator
import os
import platform
import random
import re
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isotorch.studies._checkpoint import (
    CheckpointError,
    capture_rng,
    encode_checkpoint,
    load_checkpoint,
    restore_rng,
    save_atomic,
    save_checkpoint,
    write_bytes_atomic,
    write_text_atomic,
)
from isotorch.studies._config import ConfigError, config_from_dict, config_to_dict, make_config
from isotorch.studies._registry import Study, get
from isotorch.studies._stats import Figure, Findings
from isotorch.studies._verdicts import Verdict, check_verdicts, write_verdicts

__all__ = [
    "NonFiniteLossError",
    "RunData",
    "RunFolderError",
    "StudyContext",
    "StudyInterrupted",
    "StudyRun",
    "TrainResult",
    "environment",
    "resolve_device",
    "run_study",
]

logger = logging.getLogger(__name__)
_FORMAT = "isotorch-study-checkpoint"


class RunFolderError(RuntimeError):
    """The output folder cannot be used: it exists and is not empty (without resume), is not writable, etc."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C: the current training loop saved a checkpoint and the run stopped; resume with ``resume=True``."""


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the last good checkpoint is kept."""


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


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`StudyContext.train` returns.

    Attributes:
        key: the training loop's name within the seed.
        steps: updates done in total.
        last: the values of the last logged record.
        restored: ``"completed"`` (finished before a resume: nothing was trained), ``"checkpoint"`` (continued from
            a checkpoint) or ``None`` (trained from step 0).
    """

    key: str
    steps: int
    last: Mapping[str, Any] = field(default_factory=dict)
    restored: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"key": self.key, "steps": self.steps, "last": dict(self.last), "restored": self.restored}


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
        self.handle.write((json.dumps(record) + "\n").encode())
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


class StudyContext:
    """Everything a study's ``run`` gets for one unit (a seed, or a seed and one of the study's configurations).

    Attributes:
        seed: the seed (python, numpy and torch's global RNGs are seeded with it before ``run``).
        configuration: the configuration to run (one of ``Study.configurations(config)``), or None when the study
            declares none (run the whole seed).
        config: the study's frozen config.
        generator: a ``torch.Generator`` seeded with ``seed``; checkpointed and restored with the rest.
        out: the run folder (figures go here; ``models/`` holds saved models).
        device: the device to train on.
    """

    def __init__(
        self,
        *,
        seed: int,
        config: Any,
        out: Path,
        device: torch.device,
        metrics: _Metrics,
        checkpoint_every: int,
        resume_state: Mapping[str, Any] | None,
        progress: Any,
        interrupted: threading.Event,
        configuration: str | None = None,
        stem: str | None = None,
    ):
        self.seed = seed
        self.configuration = configuration
        self.config = config
        self.out = out
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self._stem = stem or f"seed{seed}"
        self.checkpoint_path = out / "checkpoints" / f"{self._stem}.pt"
        self._metrics = metrics
        self._checkpoint_every = checkpoint_every
        self._progress = progress
        self._interrupted = interrupted
        state = dict(resume_state or {})
        self._completed: dict[str, dict[str, Any]] = dict(state.get("completed", {}))
        self._current: dict[str, Any] | None = state.get("current")
        self._in_file = int(state.get("log_count", 0))  # records of this seed already in its metrics file
        self._logged = 0
        self._run: str | None = None
        self._keys: set[str] = set()
        self._last_good: int | None = None  # count of the current loop's last checkpoint on disk

    def _label(self) -> str:
        return f"seed {self.seed}" + (f" (configuration {self.configuration!r})" if self.configuration else "")

    # ----------------------------------------------------------------------------------------------- logging
    def log(self, step: int, **values: Any) -> None:
        """Append one record ``{"seed", "run", "step", **values}`` to the seed's metrics file.

        Tensors and numpy values become numbers or lists. Inside :meth:`train` the record's ``run`` is the loop's
        key; outside it is ``None`` unless ``run=`` is given in ``values``.
        """
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {step!r}")
        record = {"seed": self.seed, "run": values.pop("run", self._run), "step": step}
        record.update({k: _plain(v) for k, v in values.items()})
        if self._logged >= self._in_file:
            self._metrics.write(record)
        self._logged += 1

    def records(self, **match: Any) -> list[dict[str, Any]]:
        """This unit's records written so far (also those before a resume) whose fields equal ``match``.

        A unit sees only its own records: with configurations as units, not those of the seed's other ones.
        """
        self._metrics.handle.flush()
        out = []
        with self._metrics.path.open() as handle:
            for line in handle:
                record = json.loads(line)
                if record["seed"] == self.seed and all(record.get(k) == v for k, v in match.items()):
                    out.append(record)
        return out

    # ----------------------------------------------------------------------------------------------- training
    def train(
        self,
        key: str,
        step: Callable[[int], torch.Tensor | float],
        steps: int,
        *,
        state: Mapping[str, Any],
        evaluate: Callable[[int], Mapping[str, Any]] | None = None,
        log_steps: Iterable[int] | None = None,
        log_every: int | None = None,
    ) -> TrainResult:
        """Run ``step(t)`` for t = 0 … steps−1 with logging, checkpoints, NaN checks, Ctrl-C and resume.

        ``step(t)`` performs update t and returns its loss (a scalar tensor or float, the loss *before* the update,
        i.e. of the state after t updates). After update t the count is t+1; at every count in ``log_steps`` (or
        every ``log_every``; the count 0 is the initial state) a record is logged with ``loss`` and the values of
        ``evaluate(count)``. The state after every ``checkpoint_every`` updates (a runner setting) is checkpointed
        once its own loss (that of the next update) is known to be finite; the end state of the loop is stored in
        its own file; Ctrl-C checkpoints at once.

        Args:
            key: unique name of this loop within the seed (e.g. ``"scale=0.01"``); it is the records' ``run``.
            step: one update; must draw randomness only from ``ctx.generator`` or the global RNGs.
            steps: number of updates.
            state: every stateful object of the loop, by name: anything with ``state_dict``/``load_state_dict``
                (models, optimisers, schedulers). Restored on resume.
            evaluate: values to log at logging steps (called in ``torch.no_grad``). Default: none.
            log_steps: the counts to log at. Default: every ``log_every`` (default: every 1% of ``steps``).
            log_every: log every this many updates (ignored when ``log_steps`` is given).

        Raises:
            NonFiniteLossError: the loss became NaN/inf (names the update and the kept checkpoint's update).
            StudyInterrupted: Ctrl-C (after saving a checkpoint).
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        if key in self._keys:
            raise ValueError(f"train key {key!r} was already used for {self._label()}; keys must be unique")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        for name, obj in state.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(f"state[{name!r}] must have state_dict()/load_state_dict(), got {type(obj).__name__}")
        self._keys.add(key)
        if log_steps is None:
            every = log_every or max(1, steps // 100)
            log_set = set(range(0, steps + 1, every)) | {steps}
        else:
            log_set = {int(t) for t in log_steps}

        if key in self._completed:
            done = self._completed[key]
            self._load(state, self._load_loop(key, done))
            return TrainResult(key, done["steps"], done.get("last", {}), restored="completed")

        start, restored, last = 0, None, {}
        self._last_good = None
        if self._current is not None and self._current["key"] == key:
            self._load(state, self._current)
            start, restored, last = self._current["step"], "checkpoint", self._current.get("last", {})
            self._last_good = start
        self._current = None
        self._run = key
        task = None
        if self._progress is not None:
            task = self._progress.add_task(f"seed {self.seed} · {key}", total=steps, completed=start)
        pending: tuple[int, bytes] | None = None  # a checkpoint waiting for the loss of its state
        try:
            if start == 0 and 0 in log_set:
                last = self._log_values(0, None, evaluate)
            for t in range(start, steps):
                loss = step(t)
                value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
                if not math.isfinite(value):
                    where = (
                        f"the last checkpoint with a finite loss, at update {self._last_good}, is kept in "
                        f"{self.checkpoint_path}"
                        if self._last_good is not None
                        else "no checkpoint of this loop with a finite loss had been saved yet"
                    )
                    raise NonFiniteLossError(
                        f"the loss became {value} at update {t} of run {key!r} (seed {self.seed}); {where}. "
                        "Lower the learning rate or the initialisation scale."
                    )
                if pending is not None:  # the state of the pending checkpoint has a finite loss: keep it
                    write_bytes_atomic(self.checkpoint_path, pending[1])
                    self._last_good, pending = pending[0], None
                count = t + 1
                if count in log_set:
                    last = self._log_values(count, value, evaluate)
                if task is not None:
                    self._progress.update(task, completed=count)
                if self._interrupted.is_set():
                    write_bytes_atomic(self.checkpoint_path, self._encode(key, count, state, last))
                    raise StudyInterrupted(
                        f"interrupted at update {count} of run {key!r} (seed {self.seed}); checkpoint saved to "
                        f"{self.checkpoint_path}. Resume with --resume."
                    )
                if count % self._checkpoint_every == 0 and count < steps:
                    pending = (count, self._encode(key, count, state, last))
        finally:
            self._run = None
            if task is not None:
                self._progress.remove_task(task)
        self._finish(key, steps, state, last)
        return TrainResult(key, steps, last, restored)

    def _log_values(self, count: int, loss: float | None, evaluate) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if loss is not None:
            values["loss"] = loss
        if evaluate is not None:
            with torch.no_grad():
                values.update({k: _plain(v) for k, v in evaluate(count).items()})
        self.log(count, **values)
        return values

    def _load_loop(self, key: str, done: Mapping[str, Any]) -> dict[str, Any]:
        path = self.checkpoint_path.parent / done["file"]
        if not path.exists():
            raise CheckpointError(f"{path} (the end state of run {key!r}, seed {self.seed}) is missing")
        saved = load_checkpoint(path)
        if saved.get("key") != key:
            raise CheckpointError(f"{path} holds run {saved.get('key')!r}, not {key!r}; it was left in place")
        return saved

    def _load(self, state: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
        missing = set(state) - set(saved["state"])
        if missing:
            raise CheckpointError(
                f"{self.checkpoint_path} has no state for {sorted(missing)}; was the study changed since the run "
                "started? Start a new run folder."
            )
        for name, obj in state.items():
            obj.load_state_dict(saved["state"][name])
        restore_rng(saved["rng"], {"ctx": self.generator})
        self._logged = int(saved["log_count"])

    def _index(self, current: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "seed": self.seed,
            "configuration": self.configuration,
            "done": False,
            "offset": self._metrics.sync(),
            "log_count": self._logged,
            "completed": dict(self._completed),
            "current": current,
        }

    def _encode(self, key: str, count: int, state: Mapping[str, Any], last: Mapping[str, Any]) -> bytes:
        """The checkpoint of the loop ``key`` after ``count`` updates, encoded now (by value)."""
        current = {
            "key": key,
            "step": count,
            "state": {name: obj.state_dict() for name, obj in state.items()},
            "rng": capture_rng({"ctx": self.generator}),
            "log_count": self._logged,
            "last": dict(last),
        }
        return encode_checkpoint(self._index(current))

    def _finish(self, key: str, steps: int, state: Mapping[str, Any], last: Mapping[str, Any]) -> None:
        """Store the end state of a finished loop in its own file, then the index (which no longer re-saves it)."""
        name = f"{self._stem}-loop{len(self._completed)}.pt"
        end = {
            "format": _FORMAT,
            "key": key,
            "steps": steps,
            "state": {n: obj.state_dict() for n, obj in state.items()},
            "rng": capture_rng({"ctx": self.generator}),
            "log_count": self._logged,
        }
        save_checkpoint(end, self.checkpoint_path.parent / name)
        self._completed[key] = {"file": name, "steps": steps, "log_count": self._logged, "last": dict(last)}
        save_checkpoint(self._index(None), self.checkpoint_path)

    # ----------------------------------------------------------------------------------------------- helpers
    def batch_indices(self, t: int, n: int, batch_size: int, *, key: str = "") -> torch.Tensor:
        """Indices of minibatch t of an epoch-wise shuffle of ``n`` samples, derived from (seed, key, epoch) alone.

        Stateless, so it resumes exactly: epoch e = t·batch_size // n uses the permutation of a generator seeded
        with a SHA-256 of (seed, key, e); the last batch of an epoch may be short.
        """
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
        per_epoch = math.ceil(n / batch_size)
        epoch, index = divmod(int(t), per_epoch)
        digest = hashlib.sha256(f"{self.seed}|{key}|{epoch}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
        order = torch.randperm(n, generator=g)
        return order[index * batch_size : (index + 1) * batch_size]

    def save_model(self, name: str, model: torch.nn.Module, x: torch.Tensor | None = None) -> Path:
        """Save a trained model (whole module) and an example input to ``models/seed{seed}-{name}.pt``.

        The report audits every saved model (:func:`isotorch.audit.audit_model` on the example input).
        """
        if not name or "/" in name or "\\" in name:
            raise ValueError(f"name must be a plain file-name part, got {name!r}")
        path = self.out / "models" / f"seed{self.seed}-{name}.pt"
        path.parent.mkdir(exist_ok=True)
        example = None if x is None else x.detach().cpu()
        save_atomic({"model": model, "input": example, "seed": self.seed, "name": name}, path)
        return path


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


@dataclass(frozen=True)
class StudyRun:
    """What :func:`run_study` returns: the run folder's data, findings, figures, report path and verdicts."""

    data: RunData
    findings: tuple[Findings, ...]
    figures: tuple[Figure, ...]
    report: Path | None
    verdicts: tuple[Verdict, ...] = ()

    @property
    def out(self) -> Path:
        return self.data.out


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


def _resolve(study: Study, preset: str | None, overrides) -> Any:
    presets = dict(study.presets)
    if preset is not None and preset not in presets:
        raise ConfigError(
            f"unknown preset {preset!r} for study {study.name!r}; presets: {', '.join(presets) or 'none'}"
        )
    return make_config(study.Config, preset=presets.get(preset) if preset else None, overrides=overrides)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA when available) or None (CPU) as a checked device.

    Raises:
        ConfigError: an unknown device, or CUDA asked for where torch sees none (one line, naming the reason).
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ConfigError(f"device {str(device)!r} was asked for, but CUDA is not available ({why}); use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return resolved


def _check_data(config: Any) -> None:
    """Refuse a config whose dataset files are missing, before anything is written."""
    from isotorch.studies._data import check_dataset

    name = getattr(config, "dataset", None)
    if not isinstance(name, str):
        return
    try:
        check_dataset(name, getattr(config, "data_root", None))
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None


def _check_seeds(seeds: Sequence[int] | None) -> tuple[int, ...] | None:
    if seeds is None:
        return None
    seeds = list(seeds)
    try:
        values = tuple(operator.index(s) for s in seeds if not isinstance(s, bool))
    except TypeError:
        values = ()
    if len(values) != len(seeds):
        raise ConfigError(f"seeds must be ints, got {list(seeds)!r}")
    if not values:
        raise ConfigError("seeds must name at least one seed")
    repeated = sorted({s for s in values if values.count(s) > 1})
    if repeated:
        raise ConfigError(f"seeds must be distinct; {', '.join(map(str, repeated))} appear more than once")
    bad = [s for s in values if not 0 <= s < 2**32]
    if bad:
        raise ConfigError(f"seeds must be in [0, 2**32), got {bad}")
    return values


_LAYOUT = 2  # config.json "layout": 2 = a unit per (seed, configuration); absent = one unit per seed (refused)
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]")


def file_name(configuration: str) -> str:
    """The file-name part of a configuration: characters other than letters, digits and ``._=+,-`` become ``_``."""
    return _UNSAFE.sub("_", configuration)


def _configurations(study: Study, config: Any) -> tuple[str, ...]:
    """The study's checked configurations for ``config`` (``()``: whole seeds are the units)."""
    names = study.configurations(config)
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"study {study.name!r}: configurations() must return non-empty strings, got {names!r}")
    names = tuple(names)
    if len(set(names)) != len(names):
        raise ValueError(f"study {study.name!r}: configurations() returned duplicates: {list(names)}")
    files = [file_name(n) for n in names]
    if len(set(files)) != len(files):
        raise ValueError(f"study {study.name!r}: configurations {list(names)} give clashing file names {files}")
    return names


@dataclass(frozen=True)
class Unit:
    """One independent unit of a run (a seed, or a seed and a configuration), with what a worker needs to run it."""

    study: Study
    seed: int
    config: Any
    out: Path
    checkpoint_every: int
    device: str
    autocast: bool
    tensorboard: bool
    threads: int | None = None  # pin torch's intra-op threads (Ray tasks); None: leave as is
    configuration: str | None = None

    @property
    def stem(self) -> str:
        """The unit's file stem: ``seedS`` or ``seedS-C`` (C the configuration's :func:`file_name`)."""
        return f"seed{self.seed}" if self.configuration is None else f"seed{self.seed}-{file_name(self.configuration)}"

    @property
    def label(self) -> str:
        """``seed S`` or ``seed S · configuration``, for messages and progress bars."""
        return f"seed {self.seed}" if self.configuration is None else f"seed {self.seed} · {self.configuration}"


def _load_unit_checkpoint(unit: Unit) -> dict[str, Any] | None:
    path = unit.out / "checkpoints" / f"{unit.stem}.pt"
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if state.get("configuration") != unit.configuration:
        raise CheckpointError(
            f"{path} holds configuration {state.get('configuration')!r}, not {unit.configuration!r}; it was left "
            "in place"
        )
    return state


def run_unit(unit: Unit, *, progress: Any = None, interrupted: threading.Event | None = None) -> dict[str, Any]:
    """Run (or resume) one unit in this process; returns its final results (also stored in its checkpoint).

    Raises:
        NonFiniteLossError, StudyInterrupted, CheckpointError.
    """
    out = unit.out
    checkpoint = out / "checkpoints" / f"{unit.stem}.pt"
    state = _load_unit_checkpoint(unit)
    if state is not None and state["done"]:
        return state["final"]
    metrics_path = out / "metrics" / f"{unit.stem}.jsonl"
    offset = int(state["offset"]) if state is not None else 0
    if metrics_path.exists():
        size = metrics_path.stat().st_size
        if size < offset:
            raise CheckpointError(f"{metrics_path} is shorter ({size} bytes) than its checkpoint's offset ({offset})")
        os.truncate(metrics_path, offset)
    if unit.threads is not None:
        torch.set_num_threads(unit.threads)
    random.seed(unit.seed)
    np.random.seed(unit.seed)  # noqa: NPY002 - the legacy global RNG that user code may use
    torch.manual_seed(unit.seed)
    device = torch.device(unit.device)
    metrics = _Metrics(metrics_path, out / "tensorboard" if unit.tensorboard else None)
    try:
        ctx = StudyContext(
            seed=unit.seed,
            config=unit.config,
            out=out,
            device=device,
            metrics=metrics,
            checkpoint_every=unit.checkpoint_every,
            resume_state=state,
            progress=progress,
            interrupted=interrupted if interrupted is not None else threading.Event(),
            configuration=unit.configuration,
            stem=unit.stem,
        )
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if unit.autocast else contextlib.nullcontext()
        with autocast:
            final = _plain(dict(unit.study.run(ctx) or {}))
        done = {"format": _FORMAT, "seed": unit.seed, "done": True, "offset": metrics.sync(), "final": final}
        done["log_count"] = ctx._logged
        done["configuration"] = unit.configuration
        save_checkpoint(done, checkpoint)
    finally:
        metrics.close()
    return final


class _Ledger:
    """The driver's bookkeeping: the finished units, and results.json / metrics.jsonl of the finished seeds.

    A seed is finished when all its units are; its results are ``Study.combine`` of its configurations' results
    (a whole-seed unit's results as they are), its records its units' metrics files up to their final offsets, in
    the order of the configurations.
    """

    def __init__(self, study: Study, config: Any, out: Path, units: Sequence[Unit]):
        self.study, self.config, self.out = study, config, out
        self.by_seed: dict[int, list[Unit]] = {}
        for unit in units:
            self.by_seed.setdefault(unit.seed, []).append(unit)
        self.done: dict[str, tuple[dict[str, Any], int]] = {}  # stem -> (final results, metrics offset)
        self.finals: dict[int, dict[str, Any]] = {}
        self.written: tuple[int, ...] | None = None

    def scan(self) -> None:
        """Read the checkpoints already in the folder (a resumed run's finished units)."""
        for units in self.by_seed.values():
            for unit in units:
                self.add(unit)

    def add(self, unit: Unit) -> None:
        """Record ``unit`` as finished if its checkpoint says so."""
        if unit.stem in self.done:
            return
        state = _load_unit_checkpoint(unit)
        if state is not None and state["done"]:
            self.done[unit.stem] = (state["final"], int(state["offset"]))

    def finished(self, unit: Unit) -> bool:
        return unit.stem in self.done

    def write(self) -> dict[int, dict[str, Any]]:
        """Rewrite results.json and metrics.jsonl if the set of finished seeds changed (or was never written)."""
        complete = tuple(s for s, units in self.by_seed.items() if all(u.stem in self.done for u in units))
        for seed in complete:
            if seed not in self.finals:
                units = self.by_seed[seed]
                if units[0].configuration is None:
                    self.finals[seed] = self.done[units[0].stem][0]
                else:
                    parts = {u.configuration: self.done[u.stem][0] for u in units if u.configuration is not None}
                    self.finals[seed] = _plain(dict(self.study.combine(self.config, seed, parts)))
        if complete == self.written:
            return {s: self.finals[s] for s in complete}
        lines = bytearray()
        for seed in complete:
            for unit in self.by_seed[seed]:
                with (self.out / "metrics" / f"{unit.stem}.jsonl").open("rb") as handle:
                    lines += handle.read(self.done[unit.stem][1])
        finals = {s: self.finals[s] for s in complete}
        text = json.dumps({str(k): v for k, v in finals.items()}, indent=2) + "\n"
        write_text_atomic(self.out / "results.json", text)
        write_bytes_atomic(self.out / "metrics.jsonl", bytes(lines))
        self.written = complete
        return finals


_EXECUTORS = ("serial", "ray")
DEFAULT_SEEDS = (0, 1, 2)


def run_study(
    name: str,
    out: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every: int = 500,
    tensorboard: bool = False,
    device: str | torch.device | None = None,
    autocast: bool = False,
    executor: str = "serial",
    ray_address: str | None = None,
    report: bool = True,
) -> StudyRun:
    """Run a registered study over seeds into ``out``: config, metrics, checkpoints, figures, findings, report.

    Every argument is checked before anything is written (a bad one raises and leaves no folder behind).

    Args:
        name: the registered study name (:func:`isotorch.studies.names`).
        out: the run folder; created. An existing non-empty folder is an error unless ``resume``.
        seeds: distinct seeds in [0, 2³²). Default: ``(0, 1, 2)`` (REFERENCE §9: three seeds give an interval), or the
            stored seeds when resuming; on resume, seeds
            that the run does not have yet are added (the stored ones are kept).
        preset: a named preset of the study (e.g. ``"tiny"``), applied before ``overrides``.
        overrides: typed values or ``"key=value"`` strings for config fields.
        resume: continue the run stored in ``out`` (its stored config; giving a different one is an error).
        progress: show a rich progress bar (on stderr). Default: True.
        checkpoint_every: updates between checkpoints of a training loop (positive). Default: 500.
        tensorboard: also write TensorBoard scalars to ``out/tensorboard`` (needs the ``tensorboard`` package).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available). Default: CPU.
        autocast: run each unit under ``torch.autocast("cuda", dtype=torch.bfloat16)``; needs a CUDA device.
        executor: ``"serial"`` (one unit after another in this process) or ``"ray"`` (each unit a Ray task; needs
            ``isotorch[distributed]``). A unit is a seed, or a (seed, configuration) pair for a study that declares
            its configurations. Default: ``"serial"``.
        ray_address: the Ray cluster to join (``ray.init(address=...)``); default: a local cluster on this machine
            (or the Ray session this process has already started).
        report: write ``report.html`` at the end. Default: True.

    Raises:
        UnknownStudyError: no study of that name is registered.
        ConfigError: invalid seeds, preset, overrides, device or runner settings.
        RunFolderError: ``out`` is not usable (a non-empty folder without ``resume``, not writable, ...).
        CheckpointError: a checkpoint fails its checksum (named, left in place).
        NonFiniteLossError: a loss became NaN/inf (names the kept checkpoint).
        StudyInterrupted: Ctrl-C (after saving checkpoints).
        ExecutorError: Ray cannot be used.
        ImportError: tensorboard or ray missing.
    """
    study = get(name)
    out = Path(out)
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    seeds = _check_seeds(seeds)
    if executor not in _EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(_EXECUTORS)}, got {executor!r}")
    if ray_address is not None and executor != "ray":
        raise ConfigError("ray_address (--ray-address) needs executor='ray' (--executor ray)")
    torch_device = resolve_device(device)
    if autocast and torch_device.type != "cuda":
        raise ConfigError(f"bf16 autocast (--bf16) needs a CUDA device; the device is {torch_device}")
    if tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            raise ImportError(
                "tensorboard=True needs the tensorboard package: pip install 'isotorch[tensorboard]'"
            ) from None
    config = None if resume else _resolve(study, preset, overrides)  # a bad config is refused before any write

    if resume:
        if out.exists() and not out.is_dir():
            raise RunFolderError(f"output path {out} exists and is not a folder")
        if not (out / "config.json").exists():
            raise RunFolderError(f"cannot resume: {out} holds no config.json (not a study run folder)")
        meta = _read_json(out / "config.json")
        if meta.get("study") != name:
            raise RunFolderError(f"{out} holds a run of study {meta.get('study')!r}, not {name!r}")
        if meta.get("layout") != _LAYOUT:
            raise RunFolderError(
                f"cannot resume {out}: it was written by an older isotorch (one unit per seed; this version runs a "
                "unit per seed and configuration). Rerun it into a new folder"
            )
        config = config_from_dict(study.Config, meta["config"])
        if preset is not None or overrides:
            asked = _resolve(study, preset, overrides)
            if asked != config:
                raise ConfigError(
                    f"cannot resume {out} with a different config: stored {config_to_dict(config)}, asked "
                    f"{config_to_dict(asked)}. Resume without --set/--preset, or start a new folder."
                )
        stored = tuple(int(s) for s in meta["seeds"])
        added = tuple(s for s in (seeds or ()) if s not in stored)
        seeds = stored + added
    _check_data(config)
    configurations = _configurations(study, config)
    if resume and list(configurations) != meta.get("configurations"):
        raise RunFolderError(
            f"cannot resume {out}: study {name!r} now has configurations {list(configurations)}, the run has "
            f"{meta.get('configurations')} (was the study changed?); start a new folder"
        )

    with contextlib.ExitStack() as stack:
        if executor == "ray":
            from isotorch.studies import _ray

            stack.enter_context(_ray.session(ray_address))  # connects (or fails) before anything is written
        _check_folder(out, resume)
        if resume:
            assert seeds is not None  # the stored seeds and any added ones
            if added:
                meta["seeds"] = list(seeds)
                write_text_atomic(out / "config.json", json.dumps(meta, indent=2) + "\n")
        else:
            seeds = seeds or DEFAULT_SEEDS
            meta = {
                "study": name,
                "preset": preset,
                "config": config_to_dict(config),
                "seeds": list(seeds),
                "configurations": list(configurations),
                "layout": _LAYOUT,
                "runner": {
                    "checkpoint_every": checkpoint_every,
                    "device": str(torch_device),
                    "autocast": "bf16" if autocast else None,
                    "executor": executor,
                },
                "environment": environment(),
            }
            write_text_atomic(out / "config.json", json.dumps(meta, indent=2) + "\n")

        units = [
            Unit(
                study,
                seed,
                config,
                out,
                checkpoint_every,
                str(torch_device),
                autocast,
                tensorboard,
                configuration=configuration,
            )
            for seed in seeds
            for configuration in configurations or (None,)
        ]
        ledger = _Ledger(study, config, out, units)
        ledger.scan()
        pending = [u for u in units if not ledger.finished(u)]

        def on_done(unit: Unit) -> None:
            ledger.add(unit)
            ledger.write()

        interrupted = threading.Event()
        try:
            if executor == "ray":
                _ray.run_units(pending, progress=progress, interrupted=interrupted, on_done=on_done)
            else:
                with _sigint(interrupted), _progress_bar(progress) as bar:
                    for unit in pending:
                        run_unit(unit, progress=bar, interrupted=interrupted)
                        on_done(unit)
        finally:
            with contextlib.suppress(CheckpointError, OSError):
                ledger.write()

    data = RunData.load(out)
    findings = tuple(study.summarise(data))
    write_text_atomic(out / "findings.json", json.dumps([f.to_dict() for f in findings], indent=2) + "\n")
    figures = tuple(study.figures(data, out))
    write_text_atomic(out / "figures.json", json.dumps([f.to_dict() for f in figures], indent=2) + "\n")
    verdicts = tuple(check_verdicts(name, study.claims, study.verdicts(data)))
    write_verdicts(out, verdicts)
    path = None
    if report:
        from isotorch.studies._report import write_report

        path = write_report(out)
    return StudyRun(data, findings, figures, path, verdicts)


@contextlib.contextmanager
def _sigint(event: threading.Event, *, message: str | None = "saving a checkpoint at the next update"):
    """First Ctrl-C sets ``event`` (the training loop checkpoints and stops); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        if message:
            logger.warning("Ctrl-C: %s (press again to stop at once)", message)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _progress_bar(enabled: bool):
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield bar
