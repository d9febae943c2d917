"""Checks that two models share an architecture, and the data conventions of align/barrier."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn


def _settings(module: nn.Module) -> dict:
    """A module's scalar settings (ints, floats, strings, bools and tuples of them), without the training flag."""
    scalar = (int, float, str, bool, type(None))
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_")
        and k != "training"
        and (isinstance(v, scalar) or (isinstance(v, tuple) and all(isinstance(i, scalar) for i in v)))
    }


def check_same_architecture(model_a: nn.Module, model_b: nn.Module, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise ``ValueError`` naming what differs if the two models do not share an architecture and state dict.

    Compared: the module types at each path, their scalar settings (e.g. ``num_heads``, ``eps``: parameters of the
    same shapes can still be split into different heads), the state-dict keys, and each entry's shape and dtype.
    """
    for m, label in zip((model_a, model_b), names, strict=True):
        if not isinstance(m, nn.Module):
            raise TypeError(f"model_{label} must be an nn.Module, got {type(m).__name__}")
    na, nb = names
    types_a = {k: type(v).__name__ for k, v in model_a.named_modules()}
    types_b = {k: type(v).__name__ for k, v in model_b.named_modules()}
    diffs = []
    modules_b = dict(model_b.named_modules())
    for k, module in model_a.named_modules():
        if k not in types_b:
            continue
        if types_a[k] != types_b[k]:
            diffs.append(f"module {k or '(root)'} is {types_a[k]} in model_{na} but {types_b[k]} in model_{nb}")
            continue
        for attr, value in _settings(module).items():
            other = _settings(modules_b[k]).get(attr)
            if other != value:
                diffs.append(f"module {k or '(root)'} has {attr}={value!r} in model_{na} but {other!r} in model_{nb}")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    only_a = sorted(set(sa) - set(sb))
    only_b = sorted(set(sb) - set(sa))
    if only_a:
        diffs.append(f"state-dict keys only in model_{na}: {only_a[:5]}")
    if only_b:
        diffs.append(f"state-dict keys only in model_{nb}: {only_b[:5]}")
    for k in sa:
        if k in sb:
            if sa[k].shape != sb[k].shape:
                diffs.append(f"{k} has shape {tuple(sa[k].shape)} in model_{na} but {tuple(sb[k].shape)} in model_{nb}")
            elif sa[k].dtype != sb[k].dtype:
                diffs.append(f"{k} has dtype {sa[k].dtype} in model_{na} but {sb[k].dtype} in model_{nb}")
    if diffs:
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        raise ValueError("the models differ in architecture: " + "; ".join(diffs[:5]) + more)


def batches(data, *, name: str = "data") -> Iterator[tuple]:
    """Yield each batch as a tuple (inputs, targets) or (inputs,).

    ``data`` is a tensor (one batch of inputs), a pair ``(inputs, targets)`` of tensors with the same first
    dimension (one batch), or an iterable of such batches (a DataLoader, a list).
    """
    if isinstance(data, torch.Tensor):
        yield (data,)
        return
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
        and data[0].ndim > 0
        and data[1].ndim > 0
        and data[0].shape[0] == data[1].shape[0]
    ):
        yield tuple(data)
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError(
            f"{name} must be a tensor, an (inputs, targets) pair or an iterable of batches, got {type(data).__name__}"
        )
    empty = True
    for item in data:
        empty = False
        if isinstance(item, torch.Tensor):
            yield (item,)
        elif isinstance(item, (tuple, list)) and item and all(isinstance(t, torch.Tensor) for t in item):
            yield tuple(item)
        else:
            raise TypeError(f"each batch of {name} must be a tensor or a tuple of tensors, got {type(item).__name__}")
    if empty:
        raise ValueError(f"{name} is empty")


def first_inputs(data, name: str = "data") -> torch.Tensor:
    """The inputs of the first batch of ``data``."""
    for batch in batches(data, name=name):
        return batch[0]
    raise ValueError(f"{name} is empty")  # pragma: no cover - batches() raises first


def run_checked(model: nn.Module, inputs: torch.Tensor, name: str = "data"):
    """Run ``model`` on ``inputs``, turning a shape error into a ValueError that names the data."""
    try:
        return model(inputs)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        raise ValueError(
            f"{name} inputs of shape {tuple(inputs.shape)} and dtype {inputs.dtype} do not fit the model: {err}"
        ) from err
