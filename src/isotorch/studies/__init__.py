"""Reproducible experiments: the study registry and runner, the embedded datasets, and the main job (study ``demo``).

``isotorch study list`` shows the registered studies; ``isotorch study run NAME --out DIR`` runs one (see
``docs/studies.md`` for writing a study).
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
from isotorch.studies._loop import NonFiniteLossError, StudyContext, StudyInterrupted, TrainResult
from isotorch.studies._registry import Study, UnknownStudyError, get, names, register
from isotorch.studies._report import write_report
from isotorch.studies._run_folder import RunData, RunFolderError
from isotorch.studies._runner import StudyRun, run_study
from isotorch.studies._stats import Estimate, Figure, Findings, mean_ci
from isotorch.studies.demo import DemoConfig

__all__ = [
    "CheckpointError",
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
    "TrainResult",
    "UnknownStudyError",
    "get",
    "load_dataset",
    "load_digits",
    "load_vision",
    "make_mnist1d",
    "mean_ci",
    "names",
    "register",
    "run_study",
    "teacher_student",
    "write_report",
]
