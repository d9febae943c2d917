"""isotorch: symmetry-principled deep learning on PyTorch.

Every primitive has a symmetry group; isotorch lets you choose it, measure it, and see what it does to
parameters, representations and training.
"""

from isotorch import audit, directions, families, functional, groups, init, nn, optim, params, probes, testing
from isotorch.families import convert

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "audit",
    "convert",
    "directions",
    "families",
    "functional",
    "groups",
    "init",
    "nn",
    "optim",
    "params",
    "probes",
    "testing",
]
