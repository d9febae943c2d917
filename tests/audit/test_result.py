"""Tests for isotorch.audit._result: the lattice helpers and the result's dict form."""

import json
import math

from isotorch.audit import AuditResult, maximal_groups, sort_groups


def test_maximal_groups_is_an_antichain():
    assert maximal_groups({"trivial", "permutation", "signed_permutation"}, 8) == {"signed_permutation"}
    assert maximal_groups({"trivial", "permutation", "positive_scaling"}, 8) == {"permutation", "positive_scaling"}
    compact = {"trivial", "permutation", "signed_permutation", "mean_orthogonal", "special_orthogonal", "orthogonal"}
    assert maximal_groups(compact, 8) == {"orthogonal"}
    assert maximal_groups({"signed_permutation", "mean_orthogonal"}, 8) == {"signed_permutation", "mean_orthogonal"}
    assert maximal_groups(set(), 8) == frozenset()


def test_sort_groups_follows_the_lattice():
    assert sort_groups(["orthogonal", "block_orthogonal:4", "trivial", "block_orthogonal:2"]) == [
        "trivial",
        "block_orthogonal:2",
        "block_orthogonal:4",
        "orthogonal",
    ]


def test_to_dict_replaces_nan_and_sorts():
    result = AuditResult(
        name="f",
        kind="function",
        n=4,
        dim=-1,
        dtype="float64",
        tolerance=math.nan,
        trials=1,
        inputs=("given",),
        errors={
            "orthogonal": {"equivariance": math.nan, "invariance": 0.5},
            "trivial": {"equivariance": 0.0, "invariance": 0.0},
        },
        equivariant=frozenset({"trivial"}),
        invariant=frozenset({"trivial"}),
        maximal=frozenset({"trivial"}),
    )
    d = result.to_dict()
    json.dumps(d, allow_nan=False)
    assert list(d["errors"]) == ["trivial", "orthogonal"]
    assert d["errors"]["orthogonal"]["equivariance"] is None
    assert d["tolerance"] is None
    assert result.maximal_invariant == {"trivial"}
    assert result.ok and not result.degenerate and not result.random
