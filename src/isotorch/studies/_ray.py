"""Run a study's units as Ray tasks: ``run_study(..., executor="ray")``, from ``isotorch[distributed]``.

A unit is a seed, or a (seed, configuration) pair for a study that declares its independent configurations
(:meth:`~isotorch.studies.Study.configurations`, e.g. capacity's variant × width × depth): 3 seeds of a study with
24 configurations are 72 tasks, so a run keeps every CPU of a cluster busy instead of ⌈seeds / CPUs⌉ rounds.

The driver (the process that called :func:`~isotorch.studies._runner.run_study`) keeps the run folder's bookkeeping;
each task runs one unit with :func:`~isotorch.studies._loop.run_unit` and writes that unit's metrics file and
checkpoints straight into the run folder, so on a cluster the folder must be on storage that every node sees. Each
task asks for one CPU and pins torch to one intra-op thread, so a unit computes the same numbers wherever it runs
(and the same as the serial executor up to floating-point summation order).

Ctrl-C cancels the running tasks (Ray raises it in each task, which saves a checkpoint at its next update) and drops
the pending ones; finished units are kept and ``--resume`` continues. A second Ctrl-C kills the tasks at once.

``ray.init()`` starts a local cluster when no address is given (and is shut down at the end); a process that has
already called ``ray.init`` (a test fixture, a notebook) has its session reused. Ray's usage statistics are off.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["ExecutorError", "run_units", "session", "speaks_grpc"]

CONNECT_TIMEOUT_S = 20.0  # TCP reachability check of --ray-address, well inside the 120 s promised to a user
DRAIN_TIMEOUT_S = 120.0  # after Ctrl-C: how long cancelled tasks get to save their checkpoints


class ExecutorError(RuntimeError):
    """The Ray executor cannot be used: ray is not installed, or the cluster cannot be reached."""


def _import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ExecutorError("executor 'ray' needs the ray package: pip install 'isotorch[distributed]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for ``auto``/``local`` and other forms."""
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def speaks_grpc(host: str, port: int, *, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether ``host:port`` accepts a connection and answers an HTTP/2 preface as a gRPC server does.

    A gRPC server (Ray's GCS and its client server are) replies to the client preface with a SETTINGS frame.

    Raises:
        OSError: the connection fails (refused, unreachable, timed out).
    """
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.settimeout(timeout)
        conn.sendall(preface)
        reply = b""
        try:
            while len(reply) < 9:
                chunk = conn.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            return False
    return len(reply) == 9 and reply[3] == 0x04  # frame type 4: SETTINGS


@contextlib.contextmanager
def session(address: str | None) -> Iterator[Any]:
    """Connect to Ray (``address``) or start a local cluster; shut down what this call started.

    Raises:
        ExecutorError: ray is missing, or the address cannot be reached (one line, within ~20 s).
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        target = _host_port(address)
        if target is None and address not in ("auto", "local"):
            raise ExecutorError(f"--ray-address must look like HOST:PORT or ray://HOST:PORT, got {address!r}")
        if target is not None:
            try:
                grpc = speaks_grpc(*target, timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                raise ExecutorError(
                    f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); is `ray start --head` "
                    "running there, and is the port open?"
                ) from None
            if not grpc:  # ray.init would wait for minutes on a port that is open but not Ray's
                raise ExecutorError(
                    f"{address} answers but is not a Ray cluster (no gRPC server there); give the head node's GCS "
                    "port (default 6379) or a Ray client address ray://HOST:10001"
                )
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level="ERROR",
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExecutorError(f"cannot start or join a Ray cluster at {address or 'this machine'}: {first}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _task(unit) -> str:
    """One unit inside a Ray worker: its own Ctrl-C handling (Ray's cancel raises SIGINT's handler in the task)."""
    from isotorch.studies._loop import StudyInterrupted, run_unit
    from isotorch.studies._ui import sigint

    interrupted = threading.Event()
    with sigint(interrupted, message=None):
        try:
            run_unit(unit, interrupted=interrupted)
        except StudyInterrupted:
            return "interrupted"
    return "done"


def run_units(
    units: Sequence[Any],
    *,
    progress: bool,
    interrupted: threading.Event,
    on_done: Callable[[Any], Any],
    cpus_per_task: int = 1,
) -> None:
    """Run every unit as a Ray task (inside :func:`session`), calling ``on_done(unit)`` after each one that finishes.

    Raises:
        StudyInterrupted: after Ctrl-C, once the cancelled tasks saved their checkpoints.
        NonFiniteLossError, CheckpointError, ...: a task's error (the other tasks are cancelled and checkpoint).
        KeyboardInterrupt: a second Ctrl-C (the tasks are killed at once).
    """
    import ray
    import torch

    from isotorch.studies._loop import StudyInterrupted
    from isotorch.studies._ui import progress_bar, sigint

    gpus = 1 if any(torch.device(u.device).type == "cuda" for u in units) else 0
    remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus, max_retries=0)(_task)
    units = [_pinned(u, cpus_per_task) for u in units]
    with (
        sigint(interrupted, message="cancelling the running units (they save checkpoints)"),
        progress_bar(progress) as bar,
    ):
        task = bar.add_task("units (Ray tasks)", total=len(units)) if bar is not None else None
        refs = {remote.remote(u): u for u in units}
        try:
            while refs:
                if interrupted.is_set():
                    left = len(refs) - _cancel(ray, refs, on_done)
                    raise StudyInterrupted(
                        f"interrupted: the finished units are kept and the running ones saved checkpoints; "
                        f"{left} unit(s) left. Resume with --resume."
                    )
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
                for ref in ready:
                    unit = refs.pop(ref)
                    try:
                        status = ray.get(ref)
                    except ray.exceptions.TaskCancelledError:
                        status = "interrupted"
                    except ray.exceptions.RayTaskError as exc:
                        _cancel(ray, refs, on_done)
                        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                        raise cause from None
                    except ray.exceptions.RayError as exc:  # the worker died (out of memory, node lost, ...)
                        _cancel(ray, refs, on_done)
                        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                        raise ExecutorError(
                            f"the Ray task of {unit.label} failed ({type(exc).__name__}: {first}); its last checkpoint "
                            "is kept: resume with --resume"
                        ) from None
                    if status == "interrupted":  # Ctrl-C reached the worker itself: stop like the driver's
                        interrupted.set()
                        continue
                    on_done(unit)
                    if task is not None:
                        bar.update(task, advance=1)
        except StudyInterrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            for ref in refs:
                ray.cancel(ref, force=True)
            raise


def _pinned(unit, threads: int):
    import dataclasses

    return dataclasses.replace(unit, threads=threads)


def _cancel(ray, refs: dict, on_done: Callable[[Any], Any]) -> int:
    """Cancel the remaining tasks gracefully, wait (bounded) until they saved their checkpoints; how many finished.

    A task that finished its unit before the cancel reached it is booked (``on_done``) like any finished one.
    """
    for ref in refs:
        ray.cancel(ref, force=False)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    pending = list(refs)
    while pending and time.monotonic() < deadline:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
    finished = 0
    for ref, unit in refs.items():
        if ref in pending:
            continue
        try:
            status = ray.get(ref, timeout=0)
        except Exception:  # cancelled, failed or died: its checkpoint (if any) is what resume continues from
            continue
        if status == "done":
            on_done(unit)
            finished += 1
    return finished
