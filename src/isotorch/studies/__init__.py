"""Reproducible experiments: the study registry and runner, the embedded datasets, and the main job (study ``demo``).

``isotorch study list`` shows the registered studies; ``isotorch study run NAME --out DIR`` runs one (see
``docs/studies.md`` for writing a study). A study builds on the kit re-exported here: :func:`mlp`,
:class:`SupervisedStep` and :func:`select_lr` (models and training), :func:`subplots`, :func:`save_figure` and
:func:`ci_band` (figures), :class:`Claim` and :func:`paired_verdict` and its kin (verdicts).
"""

from isotorch.studies._checkpoint import CheckpointError
from isotorch.studies._config import ConfigError
from isotorch.studies._data import (
    DatasetNotFoundError,
    Split,
    load_dataset,
    load_digits,
    load_vision,
    make_mnist1d,
    teacher_student,
)
from isotorch.studies._figures import ci_band, save_figure, subplots
from isotorch.studies._loop import NonFiniteLossError, StudyContext, StudyInterrupted, TrainResult
from isotorch.studies._models import SupervisedStep, mlp, select_lr, uniform_init
from isotorch.studies._registry import Study, UnknownStudyError, get, names, register
from isotorch.studies._report import write_report
from isotorch.studies._run_folder import RunData, RunFolderError
from isotorch.studies._runner import StudyRun, run_study
from isotorch.studies._stats import Estimate, Figure, Findings, mean_ci
from isotorch.studies._verdicts import (
    Claim,
    Verdict,
    inconclusive,
    paired_verdict,
    verdict_from_interval,
    verdict_from_values,
)
from isotorch.studies.demo import DemoConfig

__all__ = [
    "CheckpointError",
    "Claim",
    "ConfigError",
    "DatasetNotFoundError",
    "DemoConfig",
    "Estimate",
    "Figure",
    "Findings",
    "NonFiniteLossError",
    "RunData",
    "RunFolderError",
    "Split",
    "Study",
    "StudyContext",
    "StudyInterrupted",
    "StudyRun",
    "SupervisedStep",
    "TrainResult",
    "UnknownStudyError",
    "Verdict",
    "ci_band",
    "get",
    "inconclusive",
    "load_dataset",
    "load_digits",
    "load_vision",
    "make_mnist1d",
    "mean_ci",
    "mlp",
    "names",
    "paired_verdict",
    "register",
    "run_study",
    "save_figure",
    "select_lr",
    "subplots",
    "teacher_student",
    "uniform_init",
    "verdict_from_interval",
    "verdict_from_values",
    "write_report",
]
