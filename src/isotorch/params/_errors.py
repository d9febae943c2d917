"""The error raised when a parameter-space symmetry would change a network's function."""

from __future__ import annotations

__all__ = ["SymmetryError"]


class SymmetryError(ValueError):
    """A group element that is not a symmetry of the model: outside a site's group, at a frozen or broken site,
    or one whose application changed the function on the example input beyond the dtype tolerance.

    isotorch never returns a model whose function was silently changed: every transform is verified, and a
    failed verification raises this error (a subclass of ``ValueError``).
    """
