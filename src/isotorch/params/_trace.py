"""A dataflow graph of a model on an example input: torch.fx tracing, with a recording run as the fallback.

When torch.fx cannot trace a model (HF transformers, data-dependent control flow), the model is run once under a
``TorchFunctionMode`` that records every torch function and tensor method called outside leaf modules, with leaf
modules recorded through forward hooks. Both paths produce the same list of :class:`Node` in execution order,
each with the value it computed on the example input, so that the site analysis (``_sites.py``) does not depend on
how the graph was obtained.
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
from torch.overrides import TorchFunctionMode

from isotorch.params._primitives import is_isotorch_primitive

logger = logging.getLogger(__name__)

# Modules the site analysis understands as a whole (never traced through).
_LEAF_TYPES: tuple[type, ...] = (nn.MultiheadAttention,)
# torch.nn modules made of other layers: always traced through
_COMPOSITE_TORCH = (
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)


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
        scope: the innermost module path the operation was called in (function and method nodes), if known.
    """

    name: str
    op: str
    target: Any = None
    qualname: str | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    value: Any = None
    scope: str | None = None

    def __repr__(self) -> str:
        return f"Node({self.name}, {self.op})"


@dataclass
class Graph:
    """The traced graph: nodes in execution order, how it was obtained, and why fx failed if it did."""

    nodes: list[Node]
    method: str
    note: str | None = None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict, *_COMPOSITE_TORCH)):
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
        logger.info(
            "torch.fx could not trace %s (%s); falling back to recording torch functions", type(model).__name__, err
        )
        return _trace_functions(model, inputs, note=f"torch.fx failed: {type(err).__name__}: {err}")
    try:
        return _run_fx(gm, model, inputs)
    except Exception as err:
        logger.info(
            "running the fx graph of %s failed (%s); falling back to recording torch functions",
            type(model).__name__,
            err,
        )
        return _trace_functions(model, inputs, note=f"torch.fx graph failed to run: {type(err).__name__}: {err}")


def _scope(n: fx.Node) -> str | None:
    stack = n.meta.get("nn_module_stack")
    if not stack:
        return None
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else None


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
        # map_arg rebuilds the argument structure with our Nodes in place of fx's; its stubs type the result as fx
        # arguments only
        args = fx.node.map_arg(n.args, lambda a: mapping[a])  # type: ignore[arg-type,return-value]
        kwargs = fx.node.map_arg(n.kwargs, lambda a: mapping[a])  # type: ignore[arg-type,return-value]
        if n.op == "placeholder":
            node = Node(n.name, "input", value=values.get(n))
        elif n.op == "get_attr":
            node = Node(n.name, "param", target=values.get(n), qualname=str(n.target), value=values.get(n))
        elif n.op == "call_module":
            node = Node(n.name, "module", model.get_submodule(n.target), str(n.target), args, kwargs, values.get(n))
        elif n.op == "call_function":
            node = Node(n.name, "function", n.target, None, args, kwargs, values.get(n), _scope(n))
        elif n.op == "call_method":
            node = Node(n.name, "method", n.target, None, args, kwargs, values.get(n), _scope(n))
        elif n.op == "output":
            node = Node(n.name, "output", args=args, value=values.get(n))
        else:  # pragma: no cover - fx has no other ops
            raise AssertionError(n.op)
        mapping[n] = node
        nodes.append(node)
    return Graph(nodes, "fx")


# tensor methods whose result is metadata, never feature values
_META = {
    "size",
    "dim",
    "numel",
    "shape",
    "dtype",
    "device",
    "ndim",
    "is_floating_point",
    "is_complex",
    "stride",
    "is_contiguous",
    "element_size",
    "requires_grad",
    "layout",
    "is_cuda",
    "names",
    "get_device",
    "data_ptr",
}
# reads feature values into Python: whatever follows is invisible
_TO_PYTHON = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "__len__", "__array__"}


def _leaf_call(module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether one call of ``module`` is recorded as one operation (its inside is not traced)."""
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict, *_COMPOSITE_TORCH)):
        return False
    if isinstance(module, _LEAF_TYPES) or is_isotorch_primitive(module):
        return True
    if getattr(type(module), "_isotorch_params_leaf", False):
        return True
    if next(module.children(), None) is not None:
        return False
    if type(module).__module__.startswith("torch.nn"):
        return True
    if next(module.parameters(recurse=False), None) is not None:
        return True  # an unknown layer with its own weights (HF Conv1D, RMSNorm classes)
    # a parameter-free helper: one tensor in (an activation class) is an operation, anything else is traced
    tensors = [a for a in args if isinstance(a, torch.Tensor)] + [
        v for v in kwargs.values() if isinstance(v, torch.Tensor)
    ]
    return len(tensors) == 1 and len(args) == 1 and isinstance(args[0], torch.Tensor)


def _op_of(func) -> tuple[str, Any]:
    """``("method", name)`` for a tensor method, ``("function", func)`` otherwise."""
    qual = getattr(func, "__qualname__", "") or ""
    name = getattr(func, "__name__", None)
    if qual == "getset_descriptor.__get__" or (name == "__get__" and hasattr(func, "__self__")):
        return "method", getattr(func.__self__, "__name__", "__get__")
    if func is torch.Tensor.__getitem__ or name == "__getitem__":
        return "function", operator.getitem
    if qual.startswith(("TensorBase.", "Tensor.")) or getattr(func, "__objclass__", None) is torch._C.TensorBase:
        return "method", name
    return "function", func


class _Recorder(TorchFunctionMode):
    """Records every torch function and tensor method called outside leaf modules, with its values."""

    def __init__(self, model: nn.Module, inputs: tuple):
        super().__init__()
        self.nodes: list[Node] = []
        self.produced: dict[int, Node] = {}
        self.alive: list[Any] = []  # keeps recorded tensors alive, so that their ids are not reused
        self.names: dict[int, str] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(p), n)
        for n, b in model.named_buffers(remove_duplicate=False):
            self.names.setdefault(id(b), n)
        self.params: dict[int, Node] = {}
        self.leaf_depth = 0
        self.stack: list[tuple] = []
        self.counts: dict[str, int] = {}
        for i, t in enumerate(inputs):
            node = Node(f"input{i}", "input", value=t)
            self.nodes.append(node)
            self.produced[id(t)] = node
            self.alive.append(t)

    def unique(self, name: str) -> str:
        k = self.counts.get(name, 0)
        self.counts[name] = k + 1
        return name if k == 0 else f"{name}_{k}"

    def wrap(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            node = self.produced.get(id(obj))
            if node is not None:
                return node
            if id(obj) in self.names:
                node = self.params.get(id(obj))
                if node is None:
                    qual = self.names[id(obj)]
                    node = Node(self.unique(qual.replace(".", "_")), "param", obj, qual, value=obj)
                    self.params[id(obj)] = node
                    self.nodes.append(node)
                return node
            node = Node(self.unique("constant"), "const", value=obj)  # made outside the traced code
            self.nodes.append(node)
            self.produced[id(obj)] = node
            self.alive.append(obj)
            return node
        if isinstance(obj, (tuple, list)):
            return (
                type(obj)(self.wrap(o) for o in obj)
                if not hasattr(obj, "_fields")
                else tuple(self.wrap(o) for o in obj)
            )
        if isinstance(obj, dict):
            return {k: self.wrap(v) for k, v in obj.items()}
        return obj

    def register(self, node: Node, out: Any) -> None:
        self.nodes.append(node)
        if isinstance(out, torch.Tensor):
            self.produced[id(out)] = node
            self.alive.append(out)
        elif isinstance(out, (tuple, list)):
            for j, o in enumerate(out):
                if isinstance(o, torch.Tensor):
                    item = Node(f"{node.name}[{j}]", "function", target=operator.getitem, args=(node, j), value=o)
                    self.nodes.append(item)
                    self.produced[id(o)] = item
                    self.alive.append(o)
        self.alive.append(out)

    def where(self) -> str | None:
        return self.stack[-1][0] if self.stack else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth > 0:
            return out
        op, target = _op_of(func)
        if op == "method" and target in _META:
            return out
        has_tensor_out = isinstance(out, torch.Tensor) or (
            isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out)
        )
        if not has_tensor_out:
            if op == "method" and target in _TO_PYTHON:
                wrapped = self.wrap(tuple(args))
                ins = [a for a in wrapped if isinstance(a, Node)]
                if ins:
                    reason = f"{target if isinstance(target, str) else getattr(target, '__name__', target)}"
                    node = Node(self.unique(f"to_python_{reason}"), "opaque", args=tuple(ins), value=out)
                    node.kwargs = {"reason": f"its values are read into Python by {reason}"}
                    self.nodes.append(node)
            return out
        label = target if isinstance(target, str) else getattr(target, "__name__", "op")
        node = Node(self.unique(label.strip("_") or "op"), op, target, None, self.wrap(tuple(args)))
        node.kwargs = self.wrap(dict(kwargs))
        node.value = out
        node.scope = self.where()
        self.register(node, out)
        return out

    # module hooks ---------------------------------------------------------------------------------------------

    def pre_hook(self, name: str):
        def fn(module, args, kwargs):
            if self.leaf_depth > 0:
                self.stack.append((name, False, None))
                return None
            leaf = _leaf_call(module, args, kwargs)
            if leaf:
                self.stack.append((name, True, (self.wrap(tuple(args)), self.wrap(dict(kwargs)))))
                self.leaf_depth += 1
            else:
                self.stack.append((name, False, None))
            return None

        return fn

    def post_hook(self, name: str):
        def fn(module, args, kwargs, output):
            _, leaf, wrapped = self.stack.pop()
            if not leaf:
                return None
            self.leaf_depth -= 1
            node = Node(self.unique(name), "module", module, name, wrapped[0], wrapped[1], output)
            self.register(node, output)
            return None

        return fn


def _tensor_leaves(obj: Any) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensor_leaves(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensor_leaves(o)]
    return []


def _trace_functions(model: nn.Module, inputs: tuple, note: str) -> Graph:
    """Run the model once and record every torch function and tensor method it calls (``TorchFunctionMode``),
    with leaf modules (torch layers, isotorch primitives, unknown layers with weights) recorded as one operation
    each through forward hooks. Unlike torch.fx this follows any Python code, so it reads models that fx cannot
    trace (HF transformers, data-dependent control flow); what it records is the path taken on ``x``.
    """
    rec = _Recorder(model, inputs)
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_pre_hook(rec.pre_hook(name), with_kwargs=True))
        handles.append(module.register_forward_hook(rec.post_hook(name), with_kwargs=True, always_call=True))
    try:
        with evaluation(model), rec:
            try:
                out = model(*inputs)
            except Exception as err:
                raise ValueError(input_error(model, inputs, err)) from err
    finally:
        for h in handles:
            h.remove()
    outs = []
    for o in _tensor_leaves(out):
        node = rec.produced.get(id(o)) or rec.params.get(id(o))
        if node is None:
            node = rec.wrap(o)
        outs.append(node)
    nodes = rec.nodes
    nodes.append(Node("output", "output", args=(tuple(outs),), value=out))
    return Graph(nodes, "functions", note)


def expected_input(model: nn.Module) -> str:
    """What the model's first layer expects of its input, in words (for error messages)."""
    dtype = next((p.dtype for p in model.parameters()), None)
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            return f"integer token ids (torch.long) below {m.num_embeddings} (its first layer {name} is an Embedding)"
        if isinstance(m, nn.Linear):
            return f"{dtype} features with {m.in_features} on the last axis (its first layer {name} is a Linear)"
        if isinstance(m, nn.modules.conv._ConvNd):
            return f"{dtype} input of shape (N, {m.in_channels}, ...) (its first layer {name} is a {type(m).__name__})"
        if type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None:
            return f"{dtype} features with {m.weight.shape[0]} on the last axis (its first layer {name} is a Conv1D)"
    return f"inputs matching its parameters ({dtype})" if dtype is not None else "inputs it accepts"


def input_error(model: nn.Module, inputs: tuple, err: Exception) -> str:
    """A one-line message naming ``x``: what it was, why the model refused it, and what the model expects."""
    described = ", ".join(f"shape {tuple(t.shape)} and dtype {t.dtype}" for t in inputs)
    text = str(err).strip().splitlines()
    reason = text[0] if text else type(err).__name__
    return (
        f"x ({described}) does not fit {type(model).__name__}: {type(err).__name__}: {reason}; "
        f"the model expects {expected_input(model)}"
    )
