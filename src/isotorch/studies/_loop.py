"""The training loop of one unit: :class:`StudyContext` (logging, ``train`` with checkpoints, NaN checks, Ctrl-C
and resume) and :func:`run_unit`.

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
import json
import math
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping
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
)
from isotorch.studies._registry import Study
from isotorch.studies._run_folder import _Metrics, _plain, file_name

__all__ = ["NonFiniteLossError", "StudyContext", "StudyInterrupted", "TrainResult", "Unit", "run_unit"]


_FORMAT = "isotorch-study-checkpoint"


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C: the current training loop saved a checkpoint and the run stopped; resume with ``resume=True``."""


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the last good checkpoint is kept."""


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
