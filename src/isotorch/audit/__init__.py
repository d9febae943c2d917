"""Symmetry audit: measure which groups a function, module, model, optimiser, initialiser or penalty respects.

The audit is a measuring instrument, not a declaration: random elements g of each candidate group (the lattice of
:mod:`isotorch.groups`) act on the feature axis in float64, and the relative errors of f(g·x) against g·f(x)
(equivariance) and f(x) (invariance) decide which groups hold; a Lie derivative through ``torch.func.jvp`` gives a
second opinion for the continuous groups. See ``docs/audit.md`` for the table of torch's and isotorch's primitives.

Examples:
    >>> import torch, isotorch as it
    >>> x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    >>> sorted(it.audit.audit(torch.tanh, x).maximal)
    ['signed_permutation']
    >>> sorted(it.audit.audit(torch.nn.RMSNorm(8, elementwise_affine=False), x).maximal)
    ['orthogonal']
"""

from isotorch.audit._function import audit, audit_module, default_tolerance
from isotorch.audit._model import ChainAudit, ModelAudit, SiteRow, audit_model, first_tensor
from isotorch.audit._result import AuditResult, maximal_groups, sort_groups
from isotorch.audit._sampling import DISTRIBUTIONS
from isotorch.audit._table import PrimitiveTable, TableRow, primitive_table
from isotorch.audit._training import InitialiserAudit, audit_initialiser, audit_optimiser, audit_regulariser

__all__ = [
    "DISTRIBUTIONS",
    "AuditResult",
    "ChainAudit",
    "InitialiserAudit",
    "ModelAudit",
    "PrimitiveTable",
    "SiteRow",
    "TableRow",
    "audit",
    "audit_initialiser",
    "audit_model",
    "audit_module",
    "audit_optimiser",
    "audit_regulariser",
    "default_tolerance",
    "first_tensor",
    "maximal_groups",
    "primitive_table",
    "sort_groups",
]
