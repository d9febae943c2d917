"""Tests for isotorch.nn._registry: every registered primitive holds its declared groups (float32 and float64) and
fails the next larger group of the lattice (negative control); the registry refuses bad specs and unknown names."""

import pytest
import torch
from torch import nn

import isotorch as it
from isotorch import groups
from isotorch.testing import assert_equivariant, equivariance_error, tolerance

SPECS = [it.nn.get(name) for name in it.nn.names()]


def _runner(spec, module):
    """The module as a function of its input; seeded per call when it is random in training mode."""
    module.train(spec.train)
    if spec.role == "dropout":
        return lambda t: (torch.manual_seed(0), module(t))[1]
    return module


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_registered_primitive_holds_its_declared_groups(spec, dtype):
    gen = torch.Generator().manual_seed(0)
    for n in spec.sizes:
        module = spec.build(n).to(dtype)
        assert module.role == spec.role
        assert tuple(module.groups) == spec.groups, "the module and the registry must declare the same groups"
        x = spec.example_input(n, dtype=dtype, generator=gen)
        fn = _runner(spec, module)
        for key in spec.groups:
            assert_equivariant(fn, x, key, dim=spec.dim, generator=torch.Generator().manual_seed(1))


def _negative_controls(spec, n):
    declared = [groups.get(k) for k in spec.groups]
    larger = {h for g in declared for h in groups.covers(g, n)}
    larger = {h for h in larger if not any(groups.is_subgroup(h, g, n) for g in declared)}
    if any(g.name == "orthogonal" for g in declared):
        larger.add(groups.get("positive_scaling"))  # O(n) is the top of the lattice: the control is GL-type
    return sorted(larger, key=str)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_registered_primitive_fails_the_next_larger_group(spec, dtype):
    if spec.note:
        pytest.skip(spec.note)
    gen = torch.Generator().manual_seed(0)
    for n in spec.sizes:
        controls = _negative_controls(spec, n)
        assert controls, "every primitive needs a negative control"
        module = spec.build(n).to(dtype)
        x = spec.example_input(n, dtype=dtype, generator=gen)
        fn = _runner(spec, module)
        for h in controls:
            err = equivariance_error(fn, x, h, dim=spec.dim, generator=torch.Generator().manual_seed(2))
            assert err > 100 * tolerance(dtype), f"{spec.name} unexpectedly holds {h} (error {err:.2e})"


def test_registry_rejects_bad_specs():
    with pytest.raises(ValueError, match="role"):
        it.nn.register(it.nn.PrimitiveSpec("x", "nonsense", nn.Identity, ("trivial",)))
    with pytest.raises(ValueError, match="already registered"):
        it.nn.register(SPECS[0])
    with pytest.raises(KeyError, match="valid names"):
        it.nn.register(it.nn.PrimitiveSpec("y", "activation", nn.Identity, ("rotation",)))


def test_names_and_get():
    names = it.nn.names()
    assert names and len(set(names)) == len(names)
    assert [spec.name for spec in SPECS] == names
    norms = it.nn.names(role="norm")
    assert norms and set(norms) < set(names) and all(it.nn.get(n).role == "norm" for n in norms)
    assert it.nn.names(role="gate") == []  # a role with nothing registered is empty, not an error
    with pytest.raises(ValueError, match=r"^role must be one of"):
        it.nn.names(role="activations")
    with pytest.raises(KeyError, match="unknown primitive 'tanh'; valid names: iso_tanh"):
        it.nn.get("tanh")
