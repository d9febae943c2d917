"""Stateless primitives chosen by symmetry group: the functional twins of :mod:`isotorch.nn`.

Every function takes a ``dim`` argument naming the feature axis that its group acts on (``-1`` for vectors and
tokens, ``1`` for the channels of a convolutional feature map).
"""

from isotorch._functional import activation as _activation
from isotorch._functional import dropout as _dropout
from isotorch._functional import gating as _gating
from isotorch._functional import norm as _norm
from isotorch._functional import pooling as _pooling
from isotorch._functional.activation import *  # noqa: F403
from isotorch._functional.dropout import *  # noqa: F403
from isotorch._functional.gating import *  # noqa: F403
from isotorch._functional.norm import *  # noqa: F403
from isotorch._functional.pooling import *  # noqa: F403

__all__ = [*_activation.__all__, *_norm.__all__, *_dropout.__all__, *_pooling.__all__, *_gating.__all__]
