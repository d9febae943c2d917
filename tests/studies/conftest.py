"""Fixtures of the studies' tests: each built-in study's tiny run, made once per session and shared."""

from __future__ import annotations

import pytest

from isotorch.studies import StudyRun, run_study

#: the seeds of every tiny run (two: a verdict needs an interval)
TINY_SEEDS = (0, 1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(name)``: the study's run at its ``"tiny"`` preset over :data:`TINY_SEEDS` (made on first use).

    The generic checks (files, verdicts, figures, resume) are in ``test_studies.py``; a study's own test file reads
    the same run for the study's science. Tests must not write into the run folder (copy it first).
    """
    runs: dict[str, StudyRun] = {}

    def get(name: str) -> StudyRun:
        if name not in runs:
            out = tmp_path_factory.mktemp(f"tiny-{name}") / "run"
            runs[name] = run_study(name, out, seeds=TINY_SEEDS, preset="tiny", progress=False)
        return runs[name]

    return get
