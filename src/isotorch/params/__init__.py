"""Parameter-space symmetries: derive, apply, verify, canonicalise, align, interpolate, teleport, remove, reshape.

The group a primitive respects becomes the symmetry of the parameters around it (REFERENCE §1.3): permutations
and sign flips for elementwise tanh, positive rescalings for ReLU, the full orthogonal group for isotropic
activations. :func:`symmetries` finds every hidden site of a model and its group; :func:`transform` applies a
group element and verifies the function; :func:`canonicalise` picks one representative per orbit; :func:`align`
matches two networks (weight matching, activation matching, orthogonal Procrustes); :func:`interpolate` and
:func:`barrier` measure linear mode connectivity; :func:`teleport` moves along continuous groups at constant
loss; :func:`syre` and the asymmetric layers remove symmetry; :func:`svd_diagonalise`, :func:`grow` and
:func:`prune` reshape isotropic layers.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> import isotorch.params as P
    >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> syms = P.symmetries(model, x)
    >>> twin = P.transform(model, P.sample_element(syms, torch.Generator().manual_seed(0)))
    >>> P.align(model, twin, x=x).distance_after < 1e-12
    True
"""

from isotorch.params._align import AlignResult, align
from isotorch.params._asymmetric import AsymConv2d, AsymLinear, FiGLU, asym_conv2d, asym_linear, figlu
from isotorch.params._canonical import canonical_element, canonicalise
from isotorch.params._element import Element, sample_element
from isotorch.params._errors import SymmetryError
from isotorch.params._fold import FoldReport, fold_norms
from isotorch.params._interpolate import BarrierResult, barrier, interpolate
from isotorch.params._rotations import (
    LearnedRotation,
    check_orthogonal,
    hadamard,
    hadamard_transform,
    learn_rotation,
    random_hadamard,
)
from isotorch.params._sites import Action, Site, Symmetries, symmetries
from isotorch.params._surgery import PruneResult, grow, prune, svd_diagonalise
from isotorch.params._syre import SyreOffset, syre
from isotorch.params._teleport import TeleportResult, teleport
from isotorch.params._transform import transform

__all__ = [
    "Action",
    "AlignResult",
    "AsymConv2d",
    "AsymLinear",
    "BarrierResult",
    "Element",
    "FiGLU",
    "FoldReport",
    "LearnedRotation",
    "PruneResult",
    "Site",
    "Symmetries",
    "SymmetryError",
    "SyreOffset",
    "TeleportResult",
    "align",
    "asym_conv2d",
    "asym_linear",
    "barrier",
    "canonical_element",
    "canonicalise",
    "check_orthogonal",
    "figlu",
    "fold_norms",
    "grow",
    "hadamard",
    "hadamard_transform",
    "interpolate",
    "learn_rotation",
    "prune",
    "random_hadamard",
    "sample_element",
    "svd_diagonalise",
    "symmetries",
    "syre",
    "teleport",
    "transform",
]
