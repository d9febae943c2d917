"""A check shared by the studies' end-to-end tests."""

from __future__ import annotations

import json


def check_verdicts(out, claims, seeds):
    """verdicts.json has one valid entry per declared claim, in order."""
    entries = json.loads((out / "verdicts.json").read_text())
    assert [e["claim"] for e in entries] == [c.name for c in claims]
    for e in entries:
        assert e["verdict"] in ("supported", "contradicted", "inconclusive")
        assert e["text"] and e["source"] and e["statistic"] and e["direction"] in (1, -1)
        assert set(e["seeds"]) <= set(seeds)
        lo, hi = e["ci95"]
        if e["verdict"] != "inconclusive":
            assert e["estimate"] is not None and lo is not None and lo <= e["estimate"] <= hi
            assert e["n"] == len(e["seeds"]) >= 2
