"""Representation probes: does a primitive's symmetry group leave fingerprints in what a network learns?

- Basis alignment and quantisation: :func:`srm` (Spotlight Resonance Method), :func:`ppp` (Privileged-Plane
  Projective method) and their scalar summaries :func:`alignment_score` and :func:`quantisation_score`.
- Rank through depth: :func:`numerical_rank`, :func:`effective_rank`, :func:`stable_rank`, :func:`rank_profile`.
- Neural collapse: :func:`neural_collapse`, :func:`neural_collapse_from_stats`.
- Neuron collapse and symmetry breaking from weights: :func:`neuron_distances`.
- Comparing networks: :func:`linear_cka`, :func:`kernel_alignment`, :func:`compare_layers`.
- Outliers and low-bit quantisation: :func:`outliers` (max/rms per token and channel, channel kurtosis, outlier
  channels), :func:`fake_quantise`, :func:`quantisation_error`, :func:`weight_quantisation`.
- Streaming: :func:`collect` runs data through a model with hooks and feeds :class:`Moments`,
  :class:`ClassMoments`, :class:`Reservoir` and custom accumulators, never holding every activation.

Formulas and sources: ``REFERENCE.md`` section 4.
"""

from isotorch.probes._accumulators import ClassMoments, Moments, NearestCentreAgreement, Reservoir
from isotorch.probes._collapse import NeuralCollapseResult, neural_collapse, neural_collapse_from_stats
from isotorch.probes._collect import Collection, LayerStatistics, collect
from isotorch.probes._neurons import NeuronDistances, neuron_distances
from isotorch.probes._outliers import (
    OutlierResult,
    WeightQuantisation,
    channel_kurtosis,
    fake_quantise,
    max_rms_ratio,
    outliers,
    quantisation_error,
    weight_quantisation,
)
from isotorch.probes._planes import srm_baseline, srm_epsilon
from isotorch.probes._ppp import PPPResult, ppp
from isotorch.probes._rank import RankProfile, effective_rank, numerical_rank, rank_profile, stable_rank
from isotorch.probes._scores import ScoreResult, alignment_score, quantisation_score
from isotorch.probes._similarity import LayerSimilarity, compare_layers, kernel_alignment, linear_cka
from isotorch.probes._srm import SRMResult, srm

__all__ = [
    "ClassMoments",
    "Collection",
    "LayerSimilarity",
    "LayerStatistics",
    "Moments",
    "NearestCentreAgreement",
    "NeuralCollapseResult",
    "NeuronDistances",
    "OutlierResult",
    "PPPResult",
    "RankProfile",
    "Reservoir",
    "SRMResult",
    "ScoreResult",
    "WeightQuantisation",
    "alignment_score",
    "channel_kurtosis",
    "collect",
    "compare_layers",
    "effective_rank",
    "fake_quantise",
    "kernel_alignment",
    "linear_cka",
    "max_rms_ratio",
    "neural_collapse",
    "neural_collapse_from_stats",
    "neuron_distances",
    "numerical_rank",
    "outliers",
    "ppp",
    "quantisation_error",
    "quantisation_score",
    "rank_profile",
    "srm",
    "srm_baseline",
    "srm_epsilon",
    "stable_rank",
    "weight_quantisation",
]
