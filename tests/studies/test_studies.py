"""Every built-in study at its tiny preset, end to end: one test parametrised over the registry.

A new study is checked here the moment it is registered (it needs a ``"tiny"`` preset): the run folder holds
strict JSON (no bare NaN), one valid verdict per declared claim, a report, the declared figures as non-empty PNGs,
and resuming the finished run changes nothing. A study's own test file checks its science on the same run.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from isotorch import studies
from isotorch.studies import run_study
from tests.studies.conftest import TINY_SEEDS

BUILT_IN = [n for n in studies.names() if type(studies.get(n)).__module__.startswith("isotorch.studies.")]


def _strict(text: str):
    """``json.loads`` that refuses NaN and ±Infinity (what ``json.dumps(allow_nan=False)`` would refuse to write)."""

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_every_built_in_study_is_checked_here():
    assert len(BUILT_IN) >= 10 and "demo" in BUILT_IN
    for name in BUILT_IN:
        assert "tiny" in studies.get(name).presets, f"study {name!r} needs a 'tiny' preset for the test suite"


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT_IN)
def test_tiny_run_end_to_end(name, tiny_run, tmp_path):
    run = tiny_run(name)
    out = run.out
    assert set(run.data.finals) == set(TINY_SEEDS)
    for file in ("config.json", "results.json", "findings.json", "figures.json", "verdicts.json"):
        _strict((out / file).read_text())
    for file in [out / "metrics.jsonl", *sorted((out / "metrics").glob("*.jsonl"))]:
        for line in file.read_text().splitlines():
            _strict(line)

    claims = type(studies.get(name)).claims
    entries = _strict((out / "verdicts.json").read_text())
    assert len(claims) >= 1 and [e["claim"] for e in entries] == [c.name for c in claims]
    for e in entries:
        assert e["verdict"] in ("supported", "contradicted", "inconclusive")
        assert e["text"] and e["source"] and e["statistic"] and e["direction"] in (1, -1)
        assert set(e["seeds"]) <= set(TINY_SEEDS)
        assert len(e["ci95"]) == 2
        if e["verdict"] != "inconclusive":  # a decided claim has an estimate inside its interval, over ≥ 2 seeds
            lo, hi = e["ci95"]
            assert e["estimate"] is not None and lo <= e["estimate"] <= hi
            assert e["n"] == len(e["seeds"]) >= 2

    figures = _strict((out / "figures.json").read_text())
    assert figures, f"study {name!r} writes no figure"
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64") >= len(figures)
    for figure in figures:
        png = (out / figure["path"]).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
        assert figure["caption"]
    assert not [p.name for p in out.rglob("*.tmp")]  # every atomic write finished

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.suffix in (".json", ".jsonl", ".pt")}
    resumed = run_study(name, copy, resume=True, progress=False)
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.suffix in (".json", ".jsonl", ".pt")}
    changed = sorted(str(p) for p in before if before[p] != after.get(p))
    assert not changed and set(after) == set(before), f"resuming a finished run rewrote {changed}"
    assert [v.to_dict() for v in resumed.verdicts] == [v.to_dict() for v in run.verdicts]
    for seed, final in resumed.data.finals.items():
        for key, value in final.items():
            old = run.data.finals[seed][key]
            assert value == old or (isinstance(value, float) and math.isnan(value) and math.isnan(old))
