"""Streaming accumulators: moments, class statistics, a random reservoir and nearest-class-centre agreement.

Each accumulator takes batches of feature rows with ``update(x, y=None)`` and never holds every row. Sums are kept
in float64 and merged with Chan et al.'s pairwise update, so the result equals the in-memory statistic to rounding:
for a running (n, μ, S) and a batch (m, μ_b, S_b) with δ = μ_b − μ,

    μ ← μ + δ·m/(n + m),    S ← S + S_b + δδᵀ·nm/(n + m)

where S is the scatter Σ(x − μ)(x − μ)ᵀ. Rows must be finite (``collect`` drops or rejects NaN rows first).

The batch scatter S_b is a product of centred rows (centred in float64). ``matmul_dtype=torch.float32`` computes that
product in float32, about twice as fast on CPU; there is no cancellation (the rows are centred), but its relative
error rises from ~1e-15 to ~1e-6, which is harmless for neural-collapse metrics and marginal for numerical ranks at
τ = 1e-3 (eigenvalue ratios of 1e-6). Sums and merges stay in float64 either way.
"""

from __future__ import annotations

import torch

from isotorch._util import as_generator, check_int

__all__ = ["ClassMoments", "Moments", "NearestCentreAgreement", "Reservoir"]

# Rows per float64 working block inside one update (bounds the memory of a huge batch).
_ROW_BLOCK = 4096
_MATMUL_DTYPES = (torch.float64, torch.float32)


def _check_matmul_dtype(dtype: object) -> torch.dtype:
    if dtype not in _MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype must be torch.float64 or torch.float32, got {dtype!r}")
    return dtype


def _scatter(centred: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Σ cᵢcᵢᵀ of centred float64 rows, multiplied in ``dtype`` and returned in float64."""
    if dtype == torch.float64:
        return centred.T @ centred
    c = centred.to(dtype)
    return (c.T @ c).to(torch.float64)


def _check_rows(x: object, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 2:
        raise ValueError(
            f"{name} must be a floating-point tensor of shape (rows, features), got "
            f"{getattr(x, 'dtype', type(x).__name__)} with shape {tuple(getattr(x, 'shape', ()))}"
        )
    return x.detach()


def _check_dim(expected: int | None, x: torch.Tensor, who: str) -> None:
    if expected is not None and x.shape[1] != expected:
        raise ValueError(f"{who} holds {expected} features, got a batch with {x.shape[1]}")


Classifier = torch.nn.Linear | torch.Tensor | tuple[torch.Tensor, torch.Tensor | None] | None
"""A linear classifier as the probes take it: an ``nn.Linear``, a (C, d) weight, a (weight, bias) pair, or none."""


class Moments:
    """Streaming count, mean and covariance of feature rows (float64, pairwise merge).

    Args:
        matmul_dtype: dtype of the batch scatter product (module docstring). Default: ``torch.float64``.

    Attributes:
        count: rows seen.
        mean: (d,) running mean (``None`` before the first row).
        scatter: (d, d) Σ(x − μ)(x − μ)ᵀ.

    Examples:
        >>> import torch
        >>> from isotorch.probes import Moments
        >>> x = torch.randn(1000, 3, dtype=torch.float64)
        >>> m = Moments()
        >>> for chunk in x.split(64):
        ...     m.update(chunk)
        >>> torch.allclose(m.covariance(), torch.cov(x.T))
        True
    """

    name = "moments"

    def __init__(self, *, matmul_dtype: torch.dtype = torch.float64) -> None:
        self.matmul_dtype = _check_matmul_dtype(matmul_dtype)
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None

    @property
    def dim(self) -> int | None:
        return None if self.mean is None else self.mean.shape[0]

    def update(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Add rows ``x`` of shape (m, d); ``y`` is ignored."""
        x = _check_rows(x)
        _check_dim(self.dim, x, "Moments")
        for block in x.split(_ROW_BLOCK):
            if block.shape[0] == 0:
                continue
            b = block.to(torch.float64)
            m = b.shape[0]
            mean_b = b.mean(dim=0)
            scatter_b = _scatter(b - mean_b, self.matmul_dtype)
            if self.mean is None or self.scatter is None:  # the first rows (count is 0)
                self.count, self.mean, self.scatter = m, mean_b, scatter_b
                continue
            total = self.count + m
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (m / total)
            self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (self.count * m / total)
            self.count = total

    def covariance(self, correction: int = 1) -> torch.Tensor:
        """Scatter / (count − correction), as ``torch.cov`` (``correction=0`` for the population covariance)."""
        if self.scatter is None or self.count - correction <= 0:
            raise ValueError(f"covariance needs more than {correction} row(s), got {self.count}")
        return self.scatter / (self.count - correction)

    def merge(self, other: Moments) -> Moments:
        """Combine with another accumulator over disjoint rows, in place; returns ``self``."""
        if other.mean is None or other.scatter is None:  # other.count is 0
            return self
        if self.mean is None or self.scatter is None:  # self.count is 0
            self.count, self.mean, self.scatter = other.count, other.mean.clone(), other.scatter.clone()
            return self
        _check_dim(self.dim, other.mean[None], "Moments")
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.scatter = self.scatter + other.scatter + torch.outer(delta, delta) * (self.count * other.count / total)
        self.count = total
        return self

    @classmethod
    def from_classes(cls, classes: ClassMoments) -> Moments:
        """Total moments from class statistics: S = S_W + Σ_c n_c(μ_c − μ)(μ_c − μ)ᵀ."""
        out = cls()
        if classes.count == 0:
            return out
        counts, class_means, within_scatter, _ = classes._stats()
        present = counts > 0
        n_c = counts[present].to(torch.float64)
        means = class_means[present]
        mean = (n_c[:, None] * means).sum(dim=0) / n_c.sum()
        centred = means - mean
        out.count = classes.count
        out.mean = mean
        out.scatter = within_scatter + (centred * n_c[:, None]).T @ centred
        return out

    def __repr__(self) -> str:
        return f"Moments(count={self.count}, dim={self.dim})"


class ClassMoments:
    """Streaming per-class counts and means, the pooled within-class scatter, and per-class scatter traces.

    With labels y ∈ {0..C−1}: n_c, μ_c, S_W = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ and t_c = tr S_c (the per-class
    scatter trace, for CDNV). Full per-class scatter matrices S_c are kept only with ``class_scatter=True``
    (C·d² values). The class count grows as larger labels arrive; ``num_classes`` fixes it up front.

    Args:
        num_classes: fix the number of classes (labels must lie below it). Default: ``None`` (grows).
        class_scatter: also keep every class's full scatter matrix. Default: ``False``.
        matmul_dtype: dtype of the batch scatter product (module docstring). Default: ``torch.float64``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import ClassMoments
        >>> x, y = torch.randn(300, 4, dtype=torch.float64), torch.arange(300) % 3
        >>> c = ClassMoments()
        >>> for xb, yb in zip(x.split(50), y.split(50)):
        ...     c.update(xb, yb)
        >>> c.counts.tolist(), torch.allclose(c.means[1], x[y == 1].mean(0))
        ([100, 100, 100], True)
    """

    name = "classes"

    def __init__(
        self, num_classes: int | None = None, *, class_scatter: bool = False, matmul_dtype: torch.dtype = torch.float64
    ) -> None:
        if num_classes is not None:
            check_int(num_classes, "num_classes")
        self.matmul_dtype = _check_matmul_dtype(matmul_dtype)
        self.num_classes = num_classes
        self.keep_class_scatter = bool(class_scatter)
        self.count = 0
        self.counts: torch.Tensor | None = None
        self.means: torch.Tensor | None = None
        self.within_scatter: torch.Tensor | None = None
        self.class_traces: torch.Tensor | None = None
        self.class_scatter: torch.Tensor | None = None

    @property
    def dim(self) -> int | None:
        return None if self.means is None else self.means.shape[1]

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(counts, means, within_scatter, class_traces): allocated together by the first rows."""
        if self.counts is None or self.means is None or self.within_scatter is None or self.class_traces is None:
            raise ValueError("ClassMoments has no rows yet")
        return self.counts, self.means, self.within_scatter, self.class_traces

    def _grow(self, size: int, d: int, device) -> None:
        if self.counts is None:
            f64 = torch.float64
            self.counts = torch.zeros(size, dtype=torch.long, device=device)
            self.means = torch.zeros(size, d, dtype=f64, device=device)
            self.within_scatter = torch.zeros(d, d, dtype=f64, device=device)
            self.class_traces = torch.zeros(size, dtype=f64, device=device)
            if self.keep_class_scatter:
                self.class_scatter = torch.zeros(size, d, d, dtype=f64, device=device)
            return
        counts, means, _, class_traces = self._stats()
        extra = size - counts.shape[0]
        if extra <= 0:
            return
        self.counts = torch.cat([counts, counts.new_zeros(extra)])
        self.means = torch.cat([means, means.new_zeros(extra, d)])
        self.class_traces = torch.cat([class_traces, class_traces.new_zeros(extra)])
        if self.class_scatter is not None:
            self.class_scatter = torch.cat([self.class_scatter, self.class_scatter.new_zeros(extra, d, d)])

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` (m, d) with integer labels ``y`` (m,)."""
        x = _check_rows(x)
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
            raise ValueError(
                f"y must be an integer label tensor of shape ({x.shape[0]},), got {getattr(y, 'dtype', y)}"
            )
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have one label per row: {x.shape[0]} rows, got {y.shape[0]} labels")
        _check_dim(self.dim, x, "ClassMoments")
        if x.shape[0] == 0:
            return
        y = y.to(device=x.device, dtype=torch.long)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (self.num_classes is not None and hi >= self.num_classes):
            limit = "" if self.num_classes is None else f" < num_classes={self.num_classes}"
            raise ValueError(f"y must hold class indices 0 <= y{limit}, got values in [{lo}, {hi}]")
        size = max(hi + 1, self.num_classes or 0, 0 if self.counts is None else self.counts.shape[0])
        self._grow(size, x.shape[1], x.device)
        for xb, yb in zip(x.split(_ROW_BLOCK), y.split(_ROW_BLOCK), strict=True):
            self._update_block(xb.to(torch.float64), yb)

    def _update_block(self, x: torch.Tensor, y: torch.Tensor) -> None:
        counts, means, within_scatter, class_traces = self._stats()
        size, d = means.shape
        m_c = torch.bincount(y, minlength=size)
        sums = torch.zeros(size, d, dtype=torch.float64, device=x.device).index_add_(0, y, x)
        present = m_c > 0
        mean_b = sums / m_c.clamp(min=1)[:, None]
        centred = x - mean_b[y]
        scatter_b = _scatter(centred, self.matmul_dtype)
        trace_b = torch.zeros(size, dtype=torch.float64, device=x.device).index_add_(0, y, (centred * centred).sum(1))
        n_old = counts.to(torch.float64)
        n_new = n_old + m_c
        weight = torch.where(present, n_old * m_c / n_new.clamp(min=1), 0.0)
        delta = torch.where(present[:, None], mean_b - means, 0.0)
        self.means = means + delta * torch.where(present, m_c / n_new.clamp(min=1), 0.0)[:, None]
        self.within_scatter = within_scatter + scatter_b + (delta * weight[:, None]).T @ delta
        self.class_traces = class_traces + trace_b + weight * (delta * delta).sum(1)
        if self.class_scatter is not None:
            for c in torch.nonzero(present).flatten().tolist():
                rows = centred[y == c]
                self.class_scatter[c] += rows.T @ rows + torch.outer(delta[c], delta[c]) * weight[c]
        self.counts = counts + m_c
        self.count += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """(d,) global mean μ_G = Σ_c n_c μ_c / N."""
        if self.count == 0:
            raise ValueError("ClassMoments has no rows yet")
        counts, means, _, _ = self._stats()
        n_c = counts.to(torch.float64)
        return (n_c[:, None] * means).sum(dim=0) / n_c.sum()

    def within_covariance(self) -> torch.Tensor:
        """Σ_W = S_W / N (Papyan et al.)."""
        if self.count == 0:
            raise ValueError("ClassMoments has no rows yet")
        return self._stats()[2] / self.count

    def __repr__(self) -> str:
        size = 0 if self.counts is None else self.counts.shape[0]
        return f"ClassMoments(count={self.count}, classes={size}, dim={self.dim})"


class Reservoir:
    """A uniform random sample of at most ``capacity`` rows from a stream (labels kept when given).

    Every row gets a uniform random key drawn from ``generator`` (``None``: a stream seeded from torch's global
    RNG); the reservoir keeps the rows with the ``capacity`` smallest keys, which is a uniform sample without
    replacement (Efraimidis–Spirakis with equal weights). Streams with the same row counts and equally seeded
    generators keep the same row positions, so layers of one pass (or two models fed the same batches) share their
    sample.

    Examples:
        >>> import torch
        >>> from isotorch.probes import Reservoir
        >>> r = Reservoir(100, generator=torch.Generator().manual_seed(0))
        >>> for chunk in torch.randn(1000, 5).split(64):
        ...     r.update(chunk)
        >>> r.values.shape, r.seen, bool((r.indices.diff() > 0).all())
        (torch.Size([100, 5]), 1000, True)
    """

    name = "samples"

    def __init__(self, capacity: int, *, generator: torch.Generator | None = None) -> None:
        self.capacity = check_int(capacity, "capacity")
        self.seen = 0
        self._gen = as_generator(generator)
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._indices: torch.Tensor | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Offer rows ``x`` (m, d) (and labels ``y`` (m,), kept only if given from the first batch on)."""
        x = _check_rows(x)
        m = x.shape[0]
        if self._values is not None:
            _check_dim(self._values.shape[1], x, "Reservoir")
        keys = torch.rand(m, generator=self._gen, dtype=torch.float64).to(x.device)
        index = torch.arange(self.seen, self.seen + m, device=x.device)
        self.seen += m
        if m == 0:
            return
        if self._values is None:
            cap = self.capacity
            self._values = x.new_empty(cap, x.shape[1])
            self._keys = torch.full((cap,), 2.0, dtype=torch.float64, device=x.device)
            self._indices = torch.full((cap,), -1, dtype=torch.long, device=x.device)
            if y is not None:
                self._labels = torch.full((cap,), -1, dtype=torch.long, device=x.device)
        assert self._keys is not None and self._indices is not None  # allocated with _values
        if (y is None) != (self._labels is None):
            raise ValueError("Reservoir: give labels y with every batch or with none")
        # Empty slots carry key 2 (above any uniform key), so filling and replacing are the same selection.
        all_keys = torch.cat([self._keys, keys])
        keep = torch.topk(all_keys, self.capacity, largest=False, sorted=False).indices
        kept = torch.zeros(all_keys.shape[0], dtype=torch.bool, device=x.device)
        kept[keep] = True
        entering = torch.nonzero(kept[self.capacity :]).flatten()
        if entering.numel() == 0:
            return
        slots = torch.nonzero(~kept[: self.capacity]).flatten()
        self._keys[slots] = keys[entering]
        self._values[slots] = x[entering]
        self._indices[slots] = index[entering]
        if self._labels is not None and y is not None:  # both or neither (checked above)
            self._labels[slots] = y.to(device=x.device, dtype=torch.long)[entering]

    def _order(self) -> torch.Tensor:
        if self._indices is None:
            raise ValueError("Reservoir is empty")
        filled = torch.nonzero(self._indices >= 0).flatten()
        return filled[torch.argsort(self._indices[filled])]

    @property
    def values(self) -> torch.Tensor:
        """(k, d) sampled rows in stream order, k = min(capacity, seen)."""
        if self._values is None:
            raise ValueError("Reservoir is empty")
        return self._values[self._order()]

    @property
    def labels(self) -> torch.Tensor | None:
        """(k,) labels of the sampled rows (``None`` if none were given)."""
        return None if self._labels is None else self._labels[self._order()]

    @property
    def indices(self) -> torch.Tensor:
        """(k,) positions of the sampled rows in the stream (increasing)."""
        if self._indices is None:
            raise ValueError("Reservoir is empty")
        return self._indices[self._order()]

    def __len__(self) -> int:
        return 0 if self._indices is None else int((self._indices >= 0).sum())

    def __repr__(self) -> str:
        return f"Reservoir(capacity={self.capacity}, size={len(self)}, seen={self.seen})"


class NearestCentreAgreement:
    """Second-pass accumulator for NC4: how often the classifier disagrees with the nearest class centre.

    NC4 = (1/N) Σ_i 1[argmax_c(w_cᵀh_i + b_c) ≠ argmin_c ‖h_i − μ_c‖]. Also counts the nearest-class-centre error
    against labels when labels are given. Build it from the class means of a first pass.

    Args:
        means: (C, d) class means (e.g. ``ClassMoments.means``).
        classifier: ``nn.Linear`` (C outputs), a (C, d) weight tensor, a (weight, bias) pair, or ``None`` (then only
            the nearest-centre error is counted). Default: ``None``.

    Examples:
        >>> import torch
        >>> from isotorch.probes import NearestCentreAgreement
        >>> means = torch.eye(3)
        >>> acc = NearestCentreAgreement(means, classifier=torch.eye(3))
        >>> acc.update(torch.eye(3) + 0.1, torch.arange(3))
        >>> acc.nc4, acc.ncc_error
        (0.0, 0.0)
    """

    name = "nc4"

    def __init__(self, means: torch.Tensor, classifier: Classifier = None) -> None:
        from isotorch.probes._collapse import classifier_parameters

        if not isinstance(means, torch.Tensor) or not means.is_floating_point() or means.ndim != 2:
            raise ValueError(f"means must be a (C, d) floating-point tensor, got {getattr(means, 'shape', means)}")
        self.means = means.detach().to(torch.float64)
        self.weight: torch.Tensor | None
        self.bias: torch.Tensor | None
        self.weight, self.bias = (None, None) if classifier is None else classifier_parameters(classifier, means.shape)
        self.count = 0
        self.disagreements = 0
        self.ncc_errors = 0
        self.labelled = 0

    def update(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Add rows ``x`` (m, d), optionally with labels ``y`` (m,)."""
        x = _check_rows(x)
        _check_dim(self.means.shape[1], x, "NearestCentreAgreement")
        means = self.means.to(x.device)
        for i0 in range(0, x.shape[0], _ROW_BLOCK):
            xb = x[i0 : i0 + _ROW_BLOCK].to(torch.float64)
            dist = (means * means).sum(1) - 2.0 * xb @ means.T
            ncc = dist.argmin(dim=1)
            if self.weight is not None:
                logits = xb @ self.weight.to(x.device).T
                if self.bias is not None:
                    logits = logits + self.bias.to(x.device)
                self.disagreements += int((logits.argmax(dim=1) != ncc).sum())
            if y is not None:
                self.ncc_errors += int((ncc != y[i0 : i0 + _ROW_BLOCK].to(x.device)).sum())
                self.labelled += xb.shape[0]
            self.count += xb.shape[0]

    @property
    def nc4(self) -> float | None:
        """Disagreement rate between classifier and nearest class centre (``None`` without a classifier)."""
        if self.weight is None or self.count == 0:
            return None
        return self.disagreements / self.count

    @property
    def ncc_error(self) -> float | None:
        """Nearest-class-centre error rate against the labels (``None`` without labels)."""
        return None if self.labelled == 0 else self.ncc_errors / self.labelled

    def __repr__(self) -> str:
        return f"NearestCentreAgreement(count={self.count}, nc4={self.nc4}, ncc_error={self.ncc_error})"
