"""The study runner (the driver): checks the arguments, writes config.json, runs the units (serially or as Ray
tasks), keeps results.json and metrics.jsonl, then writes the findings, figures, verdicts and report.

**Units.** A unit is a seed (file stem ``U = seedS``) or, for a study that declares its independent configurations
(:meth:`~isotorch.studies.Study.configurations`), a (seed, configuration) pair (``U = seedS-C``, C the
configuration's file name): ``Study.run(ctx)`` is called once per unit with ``ctx.configuration`` set. A unit
writes only its own metrics file and checkpoints, so units run one after another in this process
(``executor="serial"``) or as Ray tasks (``executor="ray"``, see :mod:`isotorch.studies._ray`) with the same
results. The driver keeps the bookkeeping: once every unit of a seed has finished it joins their results
(``Study.combine``) and rewrites ``results.json`` and ``metrics.jsonl`` from the finished seeds' files. A folder
written before configurations were units (no ``layout`` in ``config.json``) cannot be resumed (a one-line error).

The run folder's layout and IO are in :mod:`isotorch.studies._run_folder`, the training loop of a unit in
:mod:`isotorch.studies._loop`, Ctrl-C and the progress bar in :mod:`isotorch.studies._ui`.
"""

from __future__ import annotations

import contextlib
import importlib
import operator
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from isotorch._util import dumps
from isotorch.studies._checkpoint import CheckpointError, write_bytes_atomic, write_text_atomic
from isotorch.studies._config import ConfigError, config_from_dict, config_to_dict, make_config
from isotorch.studies._loop import Unit, _load_unit_checkpoint, run_unit
from isotorch.studies._registry import Study, get
from isotorch.studies._run_folder import (
    _LAYOUT,
    RunData,
    RunFolderError,
    _check_folder,
    _plain,
    _read_json,
    environment,
    file_name,
)
from isotorch.studies._stats import Figure, Findings
from isotorch.studies._ui import progress_bar, sigint
from isotorch.studies._verdicts import Verdict, check_verdicts, write_verdicts

__all__ = ["DEFAULT_SEEDS", "StudyRun", "resolve_device", "run_study"]


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
        text = dumps({str(k): v for k, v in finals.items()}, indent=2) + "\n"
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
                write_text_atomic(out / "config.json", dumps(meta, indent=2) + "\n")
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
            write_text_atomic(out / "config.json", dumps(meta, indent=2) + "\n")

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
                with sigint(interrupted), progress_bar(progress) as bar:
                    for unit in pending:
                        run_unit(unit, progress=bar, interrupted=interrupted)
                        on_done(unit)
        finally:
            with contextlib.suppress(CheckpointError, OSError):
                ledger.write()

    data = RunData.load(out)
    findings = tuple(study.summarise(data))
    write_text_atomic(out / "findings.json", dumps([f.to_dict() for f in findings], indent=2) + "\n")
    figures = tuple(study.figures(data, out))
    write_text_atomic(out / "figures.json", dumps([f.to_dict() for f in figures], indent=2) + "\n")
    verdicts = tuple(check_verdicts(name, study.claims, study.verdicts(data)))
    write_verdicts(out, verdicts)
    path = None
    if report:
        from isotorch.studies._report import write_report

        path = write_report(out)
    return StudyRun(data, findings, figures, path, verdicts)
