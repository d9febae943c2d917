"""A dataflow graph of a model on an example input: torch.fx tracing, with forward hooks as the fallback.

Both paths produce the same list of :class:`Node` in execution order, each with the value it computed on the
example input, so that the site analysis (``_sites.py``) does not depend on how the graph was obtained.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from isotorch.params._primitives import is_isotorch_primitive

logger = logging.getLogger(__name__)

# Modules the site analysis understands as a whole (never traced through).
_LEAF_TYPES: tuple[type, ...] = (nn.MultiheadAttention,)


@dataclass(eq=False)
class Node:
    """One operation of the traced model.

    Attributes:
        name: a unique name (the fx node name, or the module path in hook mode).
        op: ``"input"``, ``"param"``, ``"module"``, ``"function"``, ``"method"``, ``"output"`` or ``"opaque"``.
        target: the module, function or method name; the tensor for ``"param"``.
        qualname: the module path (``"module"``) or attribute path (``"param"``); ``None`` otherwise.
        args, kwargs: the arguments with :class:`Node` objects in place of computed values.
        value: what the operation returned on the example input.
    """

    name: str
    op: str
    target: Any = None
    qualname: str | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    value: Any = None

    def __repr__(self) -> str:
        return f"Node({self.name}, {self.op})"


@dataclass
class Graph:
    """The traced graph: nodes in execution order, how it was obtained, and why fx failed if it did."""

    nodes: list[Node]
    method: str
    note: str | None = None


def is_leaf(module: nn.Module) -> bool:
    """Whether the analysis treats ``module`` as one operation: torch.nn layers, isotorch primitives, and the
    asymmetric layers of this package."""
    if isinstance(module, _LEAF_TYPES) or is_isotorch_primitive(module):
        return True
    if getattr(type(module), "_isotorch_params_leaf", False):
        return True
    mod = type(module).__module__
    return (mod.startswith("torch.nn") and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))) or (
        len(list(module.children())) == 0 and not mod.startswith("torch.nn")
    )


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        if isinstance(m, _LEAF_TYPES) or is_isotorch_primitive(m) or getattr(type(m), "_isotorch_params_leaf", False):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@contextlib.contextmanager
def evaluation(model: nn.Module):
    """Put ``model`` in eval mode (and no_grad) for the duration, restoring each module's training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def as_inputs(x) -> tuple:
    """The positional inputs of the model: a tensor becomes a 1-tuple, a tuple or list stays."""
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in x) and len(x) > 0:
        return tuple(x)
    raise TypeError(f"x must be a tensor or a tuple of tensors (the model's positional inputs), got {type(x).__name__}")


def trace(model: nn.Module, x) -> Graph:
    """Trace ``model`` on the example input ``x`` with torch.fx, or with forward hooks if fx fails."""
    inputs = as_inputs(x)
    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph)
    except Exception as err:
        logger.info("torch.fx could not trace %s (%s); falling back to forward hooks", type(model).__name__, err)
        return _trace_hooks(model, inputs, note=f"torch.fx failed: {type(err).__name__}: {err}")
    try:
        return _run_fx(gm, model, inputs)
    except Exception as err:
        logger.info("running the fx graph of %s failed (%s); falling back to forward hooks", type(model).__name__, err)
        return _trace_hooks(model, inputs, note=f"torch.fx graph failed to run: {type(err).__name__}: {err}")


def _run_fx(gm: fx.GraphModule, model: nn.Module, inputs: tuple) -> Graph:
    values: dict[fx.Node, Any] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n] = out
            return out

    with evaluation(model):
        _Recorder(gm).run(*inputs)
    mapping: dict[fx.Node, Node] = {}
    nodes = []
    for n in gm.graph.nodes:
        args = fx.node.map_arg(n.args, lambda a: mapping[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: mapping[a])
        if n.op == "placeholder":
            node = Node(n.name, "input", value=values.get(n))
        elif n.op == "get_attr":
            node = Node(n.name, "param", target=values.get(n), qualname=str(n.target), value=values.get(n))
        elif n.op == "call_module":
            node = Node(n.name, "module", model.get_submodule(n.target), str(n.target), args, kwargs, values.get(n))
        elif n.op == "call_function":
            node = Node(n.name, "function", n.target, None, args, kwargs, values.get(n))
        elif n.op == "call_method":
            node = Node(n.name, "method", n.target, None, args, kwargs, values.get(n))
        elif n.op == "output":
            node = Node(n.name, "output", args=args, value=values.get(n))
        else:  # pragma: no cover - fx has no other ops
            raise AssertionError(n.op)
        mapping[n] = node
        nodes.append(node)
    return Graph(nodes, "fx")


def _trace_hooks(model: nn.Module, inputs: tuple, note: str) -> Graph:
    """Record the leaf-module calls and connect them by tensor identity.

    A module input that was not produced by a recorded module or the model input comes from code the hooks
    cannot see; it is represented by an ``"opaque"`` node that depends on every earlier recorded output, so that
    the analysis freezes whatever such code may touch.
    """
    calls: list[tuple[str, nn.Module, tuple, Any]] = []
    handles = []

    def hook(name):
        def fn(module, args, output):
            calls.append((name, module, args, output))

        return fn

    for name, module in model.named_modules():
        if name and is_leaf(module) and not any(True for _ in _ancestors_leaf(model, name)):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with evaluation(model):
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()

    produced: dict[int, Node] = {}
    nodes: list[Node] = []
    for i, t in enumerate(inputs):
        node = Node(f"input{i}", "input", value=t)
        nodes.append(node)
        produced[id(t)] = node
    seen_outputs: list[Node] = []
    for k, (name, module, args, output) in enumerate(calls):
        new_args = []
        for a in args:
            if isinstance(a, torch.Tensor):
                if id(a) in produced:
                    new_args.append(produced[id(a)])
                else:
                    opaque = Node(f"opaque{k}", "opaque", args=tuple(seen_outputs), value=a)
                    nodes.append(opaque)
                    new_args.append(opaque)
            else:
                new_args.append(a)
        node = Node(name if not any(n.name == name for n in nodes) else f"{name}#{k}", "module", module, name)
        node.args = tuple(new_args)
        node.value = output
        nodes.append(node)
        seen_outputs.append(node)
        if isinstance(output, torch.Tensor):
            produced[id(output)] = node
        elif isinstance(output, tuple):
            for j, o in enumerate(output):
                if isinstance(o, torch.Tensor):
                    item = Node(f"{node.name}[{j}]", "function", target=operator.getitem, args=(node, j), value=o)
                    nodes.append(item)
                    produced[id(o)] = item
    outs = out if isinstance(out, tuple) else (out,)
    out_args = []
    for o in outs:
        if isinstance(o, torch.Tensor) and id(o) in produced:
            out_args.append(produced[id(o)])
        else:
            out_args.append(Node("opaque_output", "opaque", args=tuple(seen_outputs), value=o))
            nodes.append(out_args[-1])
    # every recorded output not read by a recorded module may be read by code the hooks cannot see
    read = {id(a) for n in nodes for a in n.args if isinstance(a, Node)} | {id(a) for a in out_args}
    escaped = [n for n in seen_outputs if id(n) not in read]
    if escaped:
        nodes.append(Node("opaque_escape", "opaque", args=tuple(escaped)))
    nodes.append(Node("output", "output", args=(tuple(out_args) if len(out_args) > 1 else out_args[0],), value=out))
    return Graph(nodes, "hooks", note)


def _ancestors_leaf(model: nn.Module, name: str):
    """Yield the proper ancestors of module ``name`` that are leaves themselves (their children are not hooked)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        anc = model.get_submodule(".".join(parts[:i]))
        if is_leaf(anc):
            yield anc
