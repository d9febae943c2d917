"""report.html: every figure embedded, findings, audits of saved models, config and environment; offline."""

from __future__ import annotations

import base64
import json
import re

import pytest

from isotorch.studies import RunFolderError, run_study
from isotorch.studies._report import write_report


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    run_study("plateaus", out, seeds=(0, 1), preset="tiny", overrides={"steps": 60, "log_points": 15}, progress=False)
    return out


def test_report_has_every_figure_embedded(run_folder):
    page = (run_folder / "report.html").read_text()
    pngs = sorted(p.name for p in run_folder.glob("*.png"))
    assert pngs == ["loss_curves.png", "symmetry_breaking.png"]
    for name in pngs:
        encoded = base64.b64encode((run_folder / name).read_bytes()).decode()
        assert f"data:image/png;base64,{encoded}" in page, name
    captions = {f["path"]: f["caption"] for f in json.loads((run_folder / "figures.json").read_text())}
    assert all(c and c.split(":")[0][:20] in page for c in captions.values())


def test_report_is_offline_and_complete(run_folder):
    page = (run_folder / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing fetched from the network
    for text in (
        "Findings",
        "plateaus and jumps by initialisation scale",
        "scale=0.1",
        "±",
        "Config",
        "Environment",
        "torch_threads",
        "Symmetry audit of the saved models",
        "seed0-scale=0.1",
    ):
        assert text in page, text
    assert "audit failed" not in page


def test_report_command_and_extra_figure(run_folder, tmp_path):
    from typer.testing import CliRunner

    from isotorch.studies._cli import study_app

    (run_folder / "extra.png").write_bytes((run_folder / "loss_curves.png").read_bytes())
    try:
        result = CliRunner().invoke(study_app, ["report", str(run_folder)])
        assert result.exit_code == 0, result.output
        page = (run_folder / "report.html").read_text()
        assert "id='extra.png'" in page and "not listed by this run" in page
        (run_folder / "loss_curves.png").rename(run_folder / "moved.png")
        assert CliRunner().invoke(study_app, ["report", str(run_folder)]).exit_code == 0
        assert (
            "loss_curves.png was listed by the study but its file is missing"
            in (run_folder / "report.html").read_text()
        )
    finally:
        (run_folder / "extra.png").unlink()
        if (run_folder / "moved.png").exists():
            (run_folder / "moved.png").rename(run_folder / "loss_curves.png")
    with pytest.raises(RunFolderError, match="not a study run folder"):
        write_report(tmp_path)
