"""Stream data through a model and feed each hooked layer's activations into streaming accumulators.

``collect`` attaches forward hooks by ``named_modules()`` name, runs the model in eval mode under ``no_grad``
(restoring every module's mode afterwards), turns each layer's output into feature rows and feeds them to
accumulators: moments (count, mean, covariance), class statistics (when batches carry integer labels) and a capped,
seeded reservoir of rows for the probes that need samples (SRM, PPP, CKA). It never holds every activation.

How outputs become rows (``features=``):

- 2-D outputs (B, d) are rows as they are; 1-D outputs (B,) are one feature.
- ``"flatten"`` (default): an output (B, C, H, W) gives B rows of C·H·W features.
- ``"channels"``: each site gives a row of its C channel values, B·H·W rows (labels repeat per site). This is the
  natural choice for basis-alignment probes, since an elementwise primitive acts on the channel axis.
- ``"pool"``: the mean over all sites, B rows of C features (the usual choice for rank and neural collapse of conv
  features).

``channel_dim`` names the channel axis of the output (1 for NCHW convolutions, −1 for (B, T, d) token sequences).
A module that returns a tuple contributes its first element.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from isotorch._util import NAN_POLICIES, check_axis, check_choice, check_int, draw_seed, json_safe
from isotorch.probes._accumulators import ClassMoments, Moments, Reservoir

__all__ = ["Collection", "LayerStatistics", "collect"]

logger = logging.getLogger(__name__)

FEATURE_MODES = ("flatten", "channels", "pool")
PROBE_NAMES = ("moments", "classes", "samples")
# A covariance of more features than this (8192² float64 = 512 MiB) is refused with a hint.
MAX_COVARIANCE_FEATURES = 8192
_LABEL_KEYS = ("labels", "label", "y", "target", "targets")


@dataclass(frozen=True)
class LayerStatistics:
    """What ``collect`` gathered for one layer.

    Attributes:
        name: the module name.
        output_shape: shape of one input's output (without the batch axis).
        dim: features per row.
        rows: rows fed to the accumulators.
        moments: :class:`Moments` (count, mean, covariance) or ``None``.
        classes: :class:`ClassMoments` or ``None`` (needs integer labels).
        samples: :class:`Reservoir` of rows (and labels) or ``None``.
        extra: custom accumulators by name.
        excluded_nonfinite: rows dropped for NaN/inf (``nan_policy="omit"``).
    """

    name: str
    output_shape: tuple[int, ...]
    dim: int
    rows: int
    moments: Moments | None = None
    classes: ClassMoments | None = None
    samples: Reservoir | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    excluded_nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (counts and sizes, not the matrices)."""
        return json_safe(
            {
                "name": self.name,
                "output_shape": list(self.output_shape),
                "dim": self.dim,
                "rows": self.rows,
                "moments": None if self.moments is None else {"count": self.moments.count},
                "classes": None
                if self.classes is None or self.classes.counts is None
                else {"counts": self.classes.counts.tolist()},
                "samples": None if self.samples is None else {"size": len(self.samples), "seen": self.samples.seen},
                "extra": sorted(self.extra),
                "excluded_nonfinite": self.excluded_nonfinite,
            }
        )


@dataclass(frozen=True)
class Collection:
    """Per-layer statistics from one pass of :func:`collect`, indexed by layer name (``result["fc1"]``).

    Attributes:
        layers: layer name → :class:`LayerStatistics`, in the order requested.
        n_inputs: inputs streamed.
        n_batches: batches streamed.
        has_labels: whether batches carried integer labels.
        settings: the collection settings (features, channel_dim, probes, reservoir_size, seed, ...).
    """

    layers: dict[str, LayerStatistics]
    n_inputs: int
    n_batches: int
    has_labels: bool
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LayerStatistics:
        if name not in self.layers:
            raise KeyError(f"no layer {name!r} in this collection; layers: {list(self.layers)}")
        return self.layers[name]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return json_safe(
            {
                "layers": {k: v.to_dict() for k, v in self.layers.items()},
                "n_inputs": self.n_inputs,
                "n_batches": self.n_batches,
                "has_labels": self.has_labels,
                "settings": dict(self.settings),
            }
        )


def check_layers(model: torch.nn.Module, layers: object) -> list[str]:
    """Layer names as a list, each a key of ``model.named_modules()`` (clear error with close matches)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not layers or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"layers must be a non-empty list of module names (strings), got {layers!r}")
    names = dict(model.named_modules())
    for name in layers:
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, list(names), n=5)
            raise ValueError(
                f"layers: {name!r} is not a module of the model; "
                f"{'did you mean ' + repr(close) if close else 'names come from model.named_modules()'}"
            )
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat names, got {list(layers)}")
    return list(layers)


def split_batch(batch: object) -> tuple[Any, torch.Tensor | None]:
    """(inputs, labels or None) from a tensor, an (x, y, ...) tuple/list, or a dict of model keyword arguments."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("data yielded an empty batch tuple; expected x or (x, y)")
        return batch[0], batch[1] if len(batch) > 1 else None
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k not in _LABEL_KEYS}
        labels = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        return inputs, labels
    raise TypeError(f"data must yield tensors, (x, y) tuples or dicts, got {type(batch).__name__}")


def batch_size(inputs: object) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0] if inputs.ndim else 1
    if isinstance(inputs, Mapping):
        for v in inputs.values():
            if isinstance(v, torch.Tensor) and v.ndim:
                return v.shape[0]
    raise TypeError(f"cannot tell the batch size of inputs of type {type(inputs).__name__}")


def _move(inputs: Any, device: torch.device, limit: int | None) -> Any:
    def one(v):
        if isinstance(v, torch.Tensor):
            v = v[:limit] if limit is not None and v.ndim else v
            return v.to(device, non_blocking=True)
        return v

    if isinstance(inputs, Mapping):
        return {k: one(v) for k, v in inputs.items()}
    return one(inputs)


def run_model(model: torch.nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def usable_labels(labels: object, n: int) -> torch.Tensor | None:
    """Labels as int64 if they are an integer tensor of shape (n,), else ``None`` (e.g. regression targets)."""
    if (
        isinstance(labels, torch.Tensor)
        and not labels.is_floating_point()
        and not labels.is_complex()
        and labels.dtype != torch.bool
        and labels.ndim == 1
        and labels.shape[0] == n
    ):
        return labels.long()
    return None


def model_device(model: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_rows(output: object, name: str, features: str, channel_dim: int) -> tuple[torch.Tensor, int]:
    """(rows, rows per input) from one layer's output."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        raise TypeError(
            f"layer {name!r} returned {type(output).__name__}"
            f"{'' if not isinstance(output, torch.Tensor) else ' of dtype ' + str(output.dtype)}; "
            "collect needs a floating-point tensor output"
        )
    out = output.detach()
    b = out.shape[0]
    if out.ndim == 1:
        return out[:, None], 1
    if out.ndim == 2:
        return out, 1
    if features == "flatten":
        return out.reshape(b, -1), 1
    cdim = channel_dim % out.ndim
    if cdim == 0:
        raise ValueError(f"channel_dim={channel_dim} points at the batch axis of layer {name!r}'s output")
    if features == "pool":
        dims = [d for d in range(1, out.ndim) if d != cdim]
        return out.mean(dim=dims), 1
    moved = out.movedim(cdim, -1)
    sites = moved[0, ..., 0].numel()
    return moved.reshape(-1, moved.shape[-1]), sites


@contextlib.contextmanager
def hooked(model: torch.nn.Module, layers: list[str]):
    """Register forward hooks that store each named module's latest output in a dict; remove them on exit."""
    captured: dict[str, Any] = {}
    modules = dict(model.named_modules())
    handles = []

    def make(name):
        def hook(_module, _args, output):
            captured[name] = output

        return hook

    try:
        for name in layers:
            handles.append(modules[name].register_forward_hook(make(name)))
        yield captured
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def evaluation(model: torch.nn.Module, eval_mode: bool):
    """Put the model in eval mode (if asked) and restore each module's own training flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int | None, description: str):
    """A rich progress bar over inputs; yields ``advance(n)``. Disabled bars draw nothing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def total_inputs(data: object, max_samples: int | None) -> int | None:
    total = None
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        total = len(dataset)
    if max_samples is not None:
        total = max_samples if total is None else min(total, max_samples)
    return total


def check_common(features: str, channel_dim: object, max_samples: object, nan_policy: str) -> None:
    check_choice(features, "features", FEATURE_MODES)
    check_axis(channel_dim, "channel_dim", "the channel axis")
    if max_samples is not None:
        check_int(max_samples, "max_samples")
    check_choice(nan_policy, "nan_policy", NAN_POLICIES)


class _LayerState:
    """Mutable per-layer state during a pass."""

    def __init__(self, name: str, probes: list, reservoir_size: int, seed: int, num_classes: int | None) -> None:
        # every layer's reservoir gets its own generator seeded alike, so layers keep the same inputs
        self.name = name
        self.output_shape: tuple[int, ...] | None = None
        self.dim: int | None = None
        self.rows = 0
        self.excluded = 0
        names = [p for p in probes if isinstance(p, str)]
        self.want_moments = "moments" in names
        self.moments = Moments() if self.want_moments else None
        self.classes = ClassMoments(num_classes) if "classes" in names else None
        self.samples = (
            Reservoir(reservoir_size, generator=torch.Generator().manual_seed(seed)) if "samples" in names else None
        )
        self.extra: dict[str, Any] = {}
        for factory in (p for p in probes if not isinstance(p, str)):
            acc = factory(name)
            if not hasattr(acc, "update"):
                raise TypeError(f"probes: factory {factory!r} returned {type(acc).__name__}, which has no update()")
            key = getattr(acc, "name", type(acc).__name__)
            if key in self.extra or key in PROBE_NAMES:
                raise ValueError(f"probes: two accumulators are named {key!r}; give custom ones distinct .name")
            self.extra[key] = acc

    def feed(self, rows: torch.Tensor, labels: torch.Tensor | None, nan_policy: str) -> None:
        if self.dim is None:
            self.dim = rows.shape[1]
            if (self.moments is not None or self.classes is not None) and self.dim > MAX_COVARIANCE_FEATURES:
                raise ValueError(
                    f"layer {self.name!r} gives {self.dim} features per row; a covariance that size is too large. "
                    "Use features='pool' or features='channels' (or probes=('samples',))"
                )
        finite = torch.isfinite(rows).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            if nan_policy == "raise":
                raise ValueError(
                    f"layer {self.name!r} produced {bad} row(s) with NaN or inf; pass nan_policy='omit' to drop "
                    "them (the count is kept in LayerStatistics.excluded_nonfinite)"
                )
            self.excluded += bad
            rows = rows[finite]
            labels = None if labels is None else labels[finite]
        self.rows += rows.shape[0]
        if self.classes is not None:
            if labels is None:
                raise ValueError(f"layer {self.name!r}: the 'classes' probe needs labels with every batch")
            self.classes.update(rows, labels)
        elif self.moments is not None:
            self.moments.update(rows)
        if self.samples is not None:
            self.samples.update(rows, labels)
        for acc in self.extra.values():
            acc.update(rows, labels)

    def freeze(self, features: str) -> LayerStatistics:
        moments = self.moments
        if self.want_moments and self.classes is not None:
            moments = Moments.from_classes(self.classes)
        return LayerStatistics(
            name=self.name,
            output_shape=self.output_shape or (),
            dim=self.dim or 0,
            rows=self.rows,
            moments=moments,
            classes=self.classes,
            samples=self.samples,
            extra=dict(self.extra),
            excluded_nonfinite=self.excluded,
        )


def collect(
    model: torch.nn.Module,
    data: Iterable,
    layers: Sequence[str] | str,
    probes: Sequence[str | Callable[[str], Any]] | None = None,
    *,
    max_samples: int | None = None,
    reservoir_size: int = 10_000,
    features: str = "flatten",
    channel_dim: int = 1,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    eval_mode: bool = True,
    nan_policy: str = "raise",
    progress: bool = True,
) -> Collection:
    """Stream ``data`` through ``model`` and accumulate statistics of the named layers' activations.

    Each batch runs under ``torch.no_grad`` (in eval mode unless ``eval_mode=False``; every module's mode is
    restored afterwards). Each layer's output becomes feature rows (see the module docstring for ``features``) and
    feeds the requested accumulators; memory is O(layers·d² + reservoir), whatever the amount of data.

    Args:
        model: the network.
        data: an iterable of batches: tensors ``x``, tuples ``(x, y, ...)``, dicts of keyword arguments (labels under
            ``"labels"``/``"label"``/``"y"``/``"target(s)"``), or a DataLoader of those. Integer labels of shape (B,)
            enable class statistics.
        layers: module names from ``model.named_modules()`` (``""`` is the whole model's output).
        probes: which accumulators to keep per layer: ``"moments"`` (:class:`Moments`), ``"classes"``
            (:class:`ClassMoments`, needs labels), ``"samples"`` (:class:`Reservoir`), or factories
            ``f(layer_name) -> accumulator`` with ``update(x, y)`` and a ``name`` (e.g. a second-pass
            :class:`NearestCentreAgreement`). Default: ``None`` = moments and samples, plus classes when the first
            batch has labels.
        max_samples: stop after this many inputs (the last batch is cut). Default: ``None`` (all of ``data``).
        reservoir_size: rows kept by the ``"samples"`` reservoir per layer. Default: 10,000.
        features: ``"flatten"``, ``"channels"`` or ``"pool"`` for outputs with more than 2 dims. Default:
            ``"flatten"``.
        channel_dim: the channel axis of the outputs for ``"channels"``/``"pool"``. Default: 1.
        num_classes: fixes the number of classes of the class statistics. Default: ``None`` (grows with the labels).
        generator: ``torch.Generator`` for the reservoirs, or ``None`` (torch's global RNG). One seed is drawn from
            it and seeds every layer's reservoir alike, so layers with one row per input keep the same inputs; the
            drawn seed is recorded in ``settings["seed"]``. Default: ``None``.
        device: where to run the model. Default: ``None`` (the device of the model's parameters).
        eval_mode: run in eval mode. Default: ``True``.
        nan_policy: ``"raise"`` on non-finite activation rows, or ``"omit"`` to drop them (counted per layer).
            Default: ``"raise"``.
        progress: show a ``rich`` progress bar. Default: ``True``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.probes import collect
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> data = [(torch.randn(32, 4), torch.randint(0, 3, (32,))) for _ in range(4)]
        >>> res = collect(model, data, ["1", "2"], reservoir_size=50, progress=False)
        >>> res["1"].moments.count, res["1"].dim, len(res["1"].samples), res["2"].classes.counts.sum().item()
        (128, 8, 50, 128)
    """
    layers = check_layers(model, layers)
    check_common(features, channel_dim, max_samples, nan_policy)
    check_int(reservoir_size, "reservoir_size")
    if probes is not None:
        if isinstance(probes, str) or not isinstance(probes, Sequence):
            raise TypeError(f"probes must be a list of names {PROBE_NAMES} or factories, got {probes!r}")
        for p in probes:
            if isinstance(p, str) and p not in PROBE_NAMES:
                raise ValueError(f"probes: unknown probe {p!r}; names are {PROBE_NAMES} (or pass a factory)")
            if not isinstance(p, str) and not callable(p):
                raise TypeError(f"probes: each entry must be a name or a callable factory, got {p!r}")
    seed = draw_seed(generator)
    dev = model_device(model, device)
    states: dict[str, _LayerState] | None = None
    n_inputs = n_batches = 0
    has_labels = False
    with evaluation(model, eval_mode), hooked(model, layers) as captured, torch.no_grad():
        with progress_bar(progress, total_inputs(data, max_samples), "collecting activations") as advance:
            for batch in data:
                inputs, labels = split_batch(batch)
                size = batch_size(inputs)
                limit = None if max_samples is None or n_inputs + size <= max_samples else max_samples - n_inputs
                if limit is not None:
                    size = limit
                labels = usable_labels(labels, batch_size(inputs))
                if labels is not None and limit is not None:
                    labels = labels[:limit]
                if states is None:
                    has_labels = labels is not None
                    chosen = list(probes) if probes is not None else ["moments", "samples"]
                    if probes is None and has_labels:
                        chosen.append("classes")
                    if "classes" in chosen and not has_labels:
                        raise ValueError(
                            "probes: 'classes' needs integer labels of shape (B,) in each batch, e.g. (x, y) pairs"
                        )
                    states = {n: _LayerState(n, chosen, reservoir_size, seed, num_classes) for n in layers}
                elif (labels is not None) != has_labels:
                    raise ValueError("data: every batch must carry labels, or none")
                captured.clear()
                run_model(model, _move(inputs, dev, limit))
                for name, state in states.items():
                    if name not in captured:
                        raise RuntimeError(f"layer {name!r} did not run in the forward pass; check the name")
                    rows, sites = to_rows(captured[name], name, features, channel_dim)
                    if state.output_shape is None:
                        out = captured[name][0] if isinstance(captured[name], (tuple, list)) else captured[name]
                        state.output_shape = tuple(out.shape[1:])
                    row_labels = None
                    if labels is not None:
                        row_labels = labels.to(rows.device)
                        if sites > 1:
                            row_labels = row_labels.repeat_interleave(sites)
                    state.feed(rows, row_labels, nan_policy)
                n_inputs += size
                n_batches += 1
                advance(size)
                if max_samples is not None and n_inputs >= max_samples:
                    break
    if states is None:
        raise ValueError("data yielded no batches")
    logger.debug("collected %d inputs in %d batches from layers %s", n_inputs, n_batches, layers)
    return Collection(
        layers={n: s.freeze(features) for n, s in states.items()},
        n_inputs=n_inputs,
        n_batches=n_batches,
        has_labels=has_labels,
        settings={
            "features": features,
            "channel_dim": channel_dim,
            "probes": [p if isinstance(p, str) else getattr(p, "__name__", repr(p)) for p in (probes or ["default"])],
            "reservoir_size": reservoir_size,
            "seed": seed,
            "max_samples": max_samples,
            "eval_mode": eval_mode,
            "device": str(dev),
        },
    )
