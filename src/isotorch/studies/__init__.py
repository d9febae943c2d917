"""Reproducible experiments. For now: the main job, :func:`~isotorch.studies.demo.run_demo`."""

from isotorch.studies.demo import DemoConfig, DemoResult, load_digits, run_demo

__all__ = ["DemoConfig", "DemoResult", "load_digits", "run_demo"]
