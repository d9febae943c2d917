"""The ``isotorch audit`` command: the primitive table, or the audit of a model built by a factory or from a
transformers config (random weights, nothing downloaded)."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import typer
from rich.console import Console
from torch import nn

__all__ = ["HF_MODELS", "build_hf_model", "load_factory", "parse_shape", "run_audit_command"]

HF_MODELS = ("gpt2", "bert", "llama")
"""Architectures that ``hf:NAME`` builds from a transformers config."""


class AuditCommandError(Exception):
    """A user error of the audit command: printed as one line, without a traceback."""


def parse_shape(text: str | None, option: str = "--input-shape") -> tuple[int, ...]:
    """Parse ``"8,32"`` into ``(8, 32)``."""
    if text is None or not text.strip():
        raise AuditCommandError(f"{option} is required, e.g. {option} 8,32")
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise AuditCommandError(
            f"{option} must be comma-separated positive integers such as 8,32, got {text!r}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise AuditCommandError(f"{option} must be comma-separated positive integers such as 8,32, got {text!r}")
    return shape


def load_factory(target: str) -> Callable[[], nn.Module]:
    """Import ``"package.module:factory"`` (the current directory is importable) and return the factory."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute or ":" in attribute:
        raise AuditCommandError(
            f"TARGET must be 'package.module:factory' or 'hf:NAME' ({', '.join(HF_MODELS)}), got {target!r}"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AuditCommandError(f"cannot import module {module_name!r}: {exc}") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise AuditCommandError(f"module {module_name!r} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise AuditCommandError(f"{target!r} is not callable (a function or class that returns an nn.Module)")
    return factory


def build_hf_model(name: str, *, layers: int, width: int, input_shape: tuple[int, ...] = (2, 16)):
    """A transformers model built from a config with random weights (nothing is downloaded), and token ids.

    Args:
        name: one of :data:`HF_MODELS`.
        layers: number of transformer layers.
        width: hidden width (heads of size 64 when it divides, else fewer heads).
        input_shape: (batch, sequence) of the random token ids.

    Raises:
        AuditCommandError: transformers is missing (install ``isotorch[hf]``), or the name is unknown.
    """
    if name not in HF_MODELS:
        raise AuditCommandError(f"unknown hf model {name!r}; available: {', '.join(HF_MODELS)}")
    if layers < 1 or width < 1:
        raise AuditCommandError(f"--layers and --width must be positive, got {layers} and {width}")
    if len(input_shape) != 2:
        raise AuditCommandError(f"--input-shape for hf models is batch,sequence (e.g. 2,16), got {input_shape}")
    try:
        import transformers
    except ImportError:
        raise AuditCommandError(
            "hf models need the optional dependency transformers: pip install 'isotorch[hf]'"
        ) from None
    heads = next(h for h in (width // 64, 4, 2, 1) if h >= 1 and width % h == 0)
    vocab, positions = 1000, max(128, input_shape[1])
    config: transformers.PretrainedConfig
    build: Callable[[], nn.Module]  # the model class applied to config
    if name == "gpt2":
        config = transformers.GPT2Config(
            n_layer=layers, n_embd=width, n_head=heads, n_positions=positions, vocab_size=vocab
        )
        build = functools.partial(transformers.GPT2Model, config)
    elif name == "bert":
        config = transformers.BertConfig(
            num_hidden_layers=layers,
            hidden_size=width,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=positions,
            vocab_size=vocab,
        )
        build = functools.partial(transformers.BertModel, config)
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=layers,
            hidden_size=width,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=positions,
            vocab_size=vocab,
        )
        build = functools.partial(transformers.LlamaModel, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build().eval()
    ids = torch.randint(0, vocab, input_shape, generator=torch.Generator().manual_seed(0))
    return model, ids


def _build_from_factory(target: str, input_shape: str | None):
    shape = parse_shape(input_shape)
    factory = load_factory(target)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = factory()
    except Exception as exc:
        raise AuditCommandError(f"the factory {target!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise AuditCommandError(f"the factory {target!r} returned {type(model).__name__}, not an nn.Module")
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    return model, x


def _write(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _run(target, primitives, json_path, markdown_path, input_shape, layers, width, console) -> None:
    import json

    if primitives and target:
        raise AuditCommandError("give either a model TARGET or --primitives, not both")
    if primitives:
        from isotorch.audit._table import primitive_table

        table = primitive_table(generator=torch.Generator().manual_seed(0))  # the same table on every run
        console.print(table)
        _write(json_path, table.to_json())
        _write(markdown_path, table.to_markdown())
        return
    if target is None:
        raise AuditCommandError(
            "give a model TARGET ('package.module:factory' with --input-shape, or 'hf:NAME') or --primitives"
        )
    if target.startswith("hf:"):
        shape = parse_shape(input_shape) if input_shape else (2, 16)
        model, x = build_hf_model(target[3:], layers=layers, width=width, input_shape=shape)
    else:
        model, x = _build_from_factory(target, input_shape)
    from isotorch.audit._model import audit_model

    try:
        report = audit_model(model, x, generator=torch.Generator().manual_seed(0))  # the same report on every run
    except RuntimeError as exc:
        raise AuditCommandError(f"{exc} (does --input-shape match the model?)") from None
    console.print(report)
    _write(json_path, json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    _write(markdown_path, report.to_markdown())


def run_audit_command(
    *,
    target: str | None,
    primitives: bool,
    json_path: Path | None,
    markdown_path: Path | None,
    input_shape: str | None,
    layers: int,
    width: int,
) -> None:
    """Body of ``isotorch audit`` (see ``isotorch audit --help``); user errors exit with code 2 and one line."""
    console = Console()
    try:
        _run(target, primitives, json_path, markdown_path, input_shape, layers, width, console)
    except AuditCommandError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
