"""Tests for isotorch._util: the one private module for generators, argument checks and strict JSON."""

import dataclasses
import importlib
import json
import math
import pkgutil
from collections.abc import Mapping

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch._util import (
    as_generator,
    check_bool,
    check_choice,
    check_dtype,
    check_finite,
    check_generator,
    check_int,
    check_probability,
    draw_seed,
    dumps,
    fresh_seed,
    json_float,
    json_safe,
)


def test_check_generator_passes_generators_and_none_and_refuses_ints():
    g = torch.Generator()
    assert check_generator(g) is g
    assert check_generator(None) is None
    for bad in (5, 1.5, True, "0"):
        with pytest.raises(TypeError, match=r"^rng must be a torch\.Generator or None"):
            check_generator(bad, "rng")


def test_as_generator_none_follows_the_global_rng():
    g = torch.Generator()
    assert as_generator(g) is g
    torch.manual_seed(3)
    a = torch.randn(4, generator=as_generator(None))
    torch.manual_seed(3)
    assert torch.equal(torch.randn(4, generator=as_generator(None)), a)
    # negative control: without reseeding, the next draw differs
    assert not torch.equal(torch.randn(4, generator=as_generator(None)), a)
    with pytest.raises(TypeError, match="generator must be"):
        as_generator(5)


def test_draw_seed_is_reproducible_from_a_generator():
    a, b = draw_seed(torch.Generator().manual_seed(1)), draw_seed(torch.Generator().manual_seed(1))
    assert a == b and 0 <= a < 2**62
    assert draw_seed(torch.Generator().manual_seed(2)) != a


def test_fresh_seed_names_the_seed_only_while_the_generator_is_unused():
    g = torch.Generator().manual_seed(7)
    assert fresh_seed(g) == 7
    torch.randn(2, generator=g)
    assert fresh_seed(g) is None  # negative control: once drawn from, no seed reproduces its state
    assert fresh_seed(as_generator(None)) is not None  # the stream that None stands for is seeded from one draw


def test_argument_checks_accept_the_range_and_name_the_argument():
    assert check_dtype(torch.float16) is torch.float16
    for bad in (torch.int64, torch.bool, "float32"):
        with pytest.raises(TypeError, match=r"^dtype must be a floating dtype, got"):
            check_dtype(bad)
    assert check_bool(False, "train") is False
    for bad in (0, 1, None, torch.tensor(True)):
        with pytest.raises(TypeError, match=r"^train must be a bool, got"):
            check_bool(bad, "train")
    assert check_int(3, "k") == 3 and check_int(0, "k", minimum=0) == 0 and check_int(5, "k", maximum=5) == 5
    for bad, kw in ((0, {}), (True, {}), (2.0, {}), ("2", {}), (6, {"maximum": 5})):
        with pytest.raises(ValueError, match=r"^k must be an int (>= 1|in \[1, 5\]), got"):
            check_int(bad, "k", **kw)
    assert check_finite(2, "lr") == 2.0 and isinstance(check_finite(2, "lr"), float)
    for bad in (math.nan, math.inf, True, torch.tensor(1.0), -1.0):
        with pytest.raises(ValueError, match=r"^lr must be a finite float >= 0, got"):
            check_finite(bad, "lr", minimum=0)
    assert check_finite(2, "lr", minimum=0, strict=True) == 2.0 and check_finite(0, "lr", minimum=0) == 0.0
    for bad in (0, -1.0, math.nan, math.inf, True, torch.tensor(1.0), "1"):
        with pytest.raises(ValueError, match=r"^lr must be a finite float > 0, got"):
            check_finite(bad, "lr", minimum=0, strict=True)
    assert check_probability(0.95, "confidence") == 0.95
    assert check_choice("perm", "planes", ("comb", "perm")) == "perm"
    with pytest.raises(ValueError, match=r"^planes must be one of \('comb', 'perm'\), got 'all'$"):
        check_choice("all", "planes", ("comb", "perm"))
    for bad in (0.0, 1.0, True, "0.5"):
        with pytest.raises(ValueError, match=r"^confidence must be a float in the open interval \(0, 1\)"):
            check_probability(bad, "confidence")


# --- strict JSON of every result -----------------------------------------------------------------------------


def test_json_safe_and_dumps_are_strict():
    raw = {"a": float("nan"), "b": (1.0, float("-inf")), "c": torch.tensor([0.5, float("inf")]), "d": {"e": 2}}
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        json.dumps(raw | {"c": raw["c"].tolist()}, allow_nan=False)  # negative control: bare NaN is not JSON
    assert json_safe(raw) == {"a": None, "b": [1.0, None], "c": [0.5, None], "d": {"e": 2}}
    assert json.loads(dumps(raw)) == json_safe(raw)
    assert json_float(float("nan")) is None and json_float(2) == 2.0 and json_float(None) is None


def _mlp(norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)]
    if norm:
        layers = [nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


class _PreNorm(nn.Module):
    """One pre-norm residual block: h ← h + down(tanh(up(norm(h)))), then head(h)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.norm, self.up, self.down, self.head = (
            nn.Linear(4, 6),
            nn.LayerNorm(6),
            nn.Linear(6, 8),
            nn.Linear(8, 6),
            nn.Linear(6, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        return self.head(h + self.down(torch.tanh(self.up(self.norm(h)))))


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(_x(16, 4), torch.arange(16) % 3)]


def _results() -> dict[str, object]:
    """One real instance of every isotorch class with a ``to_dict`` (outside studies), by class name."""
    from isotorch import audit, params, probes

    g = torch.Generator().manual_seed(0)
    model, x = _mlp(), _x(8, 4)
    loss = nn.functional.cross_entropy
    syms = params.symmetries(model, x)
    residual = _PreNorm().double()
    normed = params.symmetries(residual, x)
    model_audit = audit.audit_model(_mlp(norm=True), x, generator=g)
    function_audit = audit.audit(torch.tanh, x, generator=g)
    table = audit.PrimitiveTable((audit.TableRow("tanh", "torch", "activation", function_audit),), 0)
    _, fold = params.fold_norms(residual, x, return_report=True)
    iso, conversion = it.convert(_mlp(), "isotropic", x=x, return_report=True)
    collection = probes.collect(model, _data(), ["0"], progress=False, generator=g)
    acts = _x(64, 4)
    return {
        "AuditResult": function_audit,
        "ModelAudit": model_audit,
        "SiteRow": model_audit.rows[0],
        "ChainAudit": model_audit.chains[0],
        "InitialiserAudit": audit.audit_initialiser(nn.init.normal_, shape=(8, 8), samples=2, generator=g),
        "TableRow": table.rows[0],
        "PrimitiveTable": table,
        "Symmetries": syms,
        "Site": syms.sites[0],
        "Action": syms.sites[0].actions[0],
        "Norm": next(s for s in normed.sites if s.norms).norms[0],
        "Element": params.sample_element(syms, g),
        "AlignResult": params.align(model, params.transform(model, params.sample_element(syms, g)), x=x),
        "BarrierResult": params.barrier(model, _mlp(), loss, _data(), steps=3),
        "FoldReport": fold,
        "TeleportResult": params.teleport(model, loss, _data()[0], steps=2),
        "LearnedRotation": params.learn_rotation(acts, steps=2, generator=g),
        "PruneResult": params.prune(iso, "0", 1, x=x),
        "ConversionReport": conversion,
        "ConversionRow": (conversion.swapped + conversion.left)[0],
        "PPPResult": probes.ppp(acts, resolution=8, generator=g),
        "NeuralCollapseResult": probes.neural_collapse(acts, torch.arange(64) % 2),
        "RankProfile": probes.rank_profile(model, _data(), ["0"]),
        "NeuronDistances": probes.neuron_distances(model[0].weight, model[0].bias, model[2].weight),
        "ScoreResult": probes.alignment_score(acts, n_bootstrap=10, n_null=0, generator=g),
        "OutlierResult": probes.outliers(acts),
        "WeightQuantisation": probes.weight_quantisation(model),
        "LayerSimilarity": probes.compare_layers(model, model, [_x(8, 4)], ["0"], generator=g),
        "Collection": collection,
        "LayerStatistics": collection["0"],
        "SRMResult": probes.srm(acts, angles=8, generator=g),
    }


def _classes_with_to_dict() -> set[str]:
    found = set()
    for info in pkgutil.walk_packages(it.__path__, "isotorch."):
        if info.name.startswith("isotorch.studies"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__ == info.name and "to_dict" in vars(obj):
                found.add(obj.__name__)
    return found


@pytest.fixture(scope="module")
def results():
    torch.manual_seed(0)
    return _results()


def test_every_result_class_is_covered(results):
    assert _classes_with_to_dict() == set(results)


def _nan_like(value: object) -> tuple[object, int]:
    """``value`` with its floats set to NaN (floats, float tensors, and tuples/dicts/dataclasses holding them)."""
    if type(value) is float:
        return math.nan, 1
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
        return torch.full_like(value, math.nan), value.numel()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _with_nan(value)
    if isinstance(value, tuple) and value:
        parts = [_nan_like(v) for v in value]
        return tuple(p for p, _ in parts), sum(c for _, c in parts)
    if isinstance(value, Mapping) and value:
        parts = {k: _nan_like(v) for k, v in value.items()}
        return {k: p for k, (p, _) in parts.items()}, sum(c for _, c in parts.values())
    return value, 0


def _with_nan(obj: object) -> tuple[object, int]:
    """``obj`` (a dataclass) with every float it holds, however nested, set to NaN; and how many were set."""
    changes: dict[str, object] = {}
    count = 0
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if f.init:
            new, n = _nan_like(getattr(obj, f.name))
            if n:
                changes[f.name], count = new, count + n
    return dataclasses.replace(obj, **changes), count  # type: ignore[type-var]


@pytest.mark.parametrize("name", sorted(_classes_with_to_dict()))
def test_to_dict_is_strict_json_with_nan_fields(results, name):
    obj, count = _with_nan(results[name])
    data = obj.to_dict()
    text = json.dumps(data, allow_nan=False)  # raises on a bare NaN or infinity
    assert json.loads(text) == data
    if count:
        assert "null" in text, f"{name}: {count} NaN field(s) set, none written as null"


def _int_generator_calls():
    from isotorch import audit, directions, functional, groups, init, params, probes, testing

    x, acts = _x(5, 4), _x(64, 4)
    return {
        "groups.sample": lambda: groups.get("orthogonal").sample(3, generator=0),
        "directions.get": lambda: directions.get("random", 3, generator=0),
        "directions.thomson": lambda: directions.thomson(4, 3, generator=0),
        "init.haar_orthogonal_": lambda: init.haar_orthogonal_(torch.empty(3, 3), generator=0),
        "functional.iso_dropout": lambda: functional.iso_dropout(x, 0.5, generator=0),
        "audit.audit": lambda: audit.audit(torch.tanh, x, generator=0),
        "testing.assert_equivariant": lambda: testing.assert_equivariant(torch.tanh, x, "permutation", generator=0),
        "params.align": lambda: params.align(_mlp(), _mlp(), x=x, generator=0),
        "params.syre": lambda: params.syre(_mlp(), 0.1, generator=0),
        "probes.srm": lambda: probes.srm(acts, generator=0),
        "probes.collect": lambda: probes.collect(_mlp(), _data(), ["0"], progress=False, generator=0),
        "probes.Reservoir": lambda: probes.Reservoir(10, generator=0),
    }


@pytest.mark.parametrize("name", sorted(_int_generator_calls()))
def test_an_int_is_not_a_generator(name):
    call = _int_generator_calls()[name]
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None"):
        call()


class _Erf(nn.Module):
    """An MLP with an operation the site engine does not know, so it measures its group."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.special.erf(self.a(x)))


def test_internal_probes_leave_the_global_rng_alone():
    from isotorch import params

    model, x = _Erf(), torch.randn(5, 4)
    state = torch.random.get_rng_state()
    syms = params.symmetries(model, x)
    assert "(audited)" in syms.sites[0].primitives[0]
    assert torch.equal(torch.random.get_rng_state(), state)
    # negative control: a user-facing call with generator=None does draw from the global RNG
    it.audit.audit(torch.tanh, x)
    assert not torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize(
    ("module", "what"),
    [(it.init, "initialiser"), (it.optim, "optimiser"), (it.directions, "direction set"), (it.nn, "primitive")],
)
def test_registries_refuse_unknown_names_listing_the_valid_ones(module, what):
    names = module.names()
    assert names  # the registry is not empty, so the refusal below is not vacuous
    args = (3,) if module is it.directions else ()
    module.get(names[0], *args)  # a listed name is accepted
    for bad in ("bogus", 3, None):
        with pytest.raises(KeyError, match=f"unknown {what} {bad!r}; valid names: {', '.join(names)}"):
            module.get(bad, *args)
