"""Primitive modules chosen by symmetry group.

Each primitive declares its symmetry: ``module.role`` (``"activation"``, ``"norm"``, ``"dropout"``, ``"pool"`` or
``"gate"``) and ``module.groups`` (the canonical group keys, see :mod:`isotorch.groups`, that it is equivariant to
along its feature axis ``module.dim``). The registered primitives are reached with :func:`names` and :func:`get`
(each a :class:`PrimitiveSpec`: how to build it for a test, its role and declared groups); :func:`register` adds one,
and the test suite and the audit table then check it against its declared groups.
"""

from isotorch.nn import activation as _activation
from isotorch.nn import dropout as _dropout
from isotorch.nn import gating as _gating
from isotorch.nn import norm as _norm
from isotorch.nn import pooling as _pooling
from isotorch.nn._registry import ROLES, PrimitiveSpec, get, names, register
from isotorch.nn.activation import *  # noqa: F403
from isotorch.nn.dropout import *  # noqa: F403
from isotorch.nn.gating import *  # noqa: F403
from isotorch.nn.norm import *  # noqa: F403
from isotorch.nn.pooling import *  # noqa: F403

__all__ = [
    *_activation.__all__,
    *_norm.__all__,
    *_dropout.__all__,
    *_pooling.__all__,
    *_gating.__all__,
    "ROLES",
    "PrimitiveSpec",
    "get",
    "names",
    "register",
]
