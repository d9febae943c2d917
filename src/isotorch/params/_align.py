"""Align network B to network A through their parameter-space symmetries (REFERENCE §5.3–5.5).

*Weight matching* maximises Σ_params ⟨θ_A, g·θ_B⟩ by coordinate descent over the sites: in random order, each
site's element is set to the exact maximiser of its own term with the other sites held fixed,

    C_s = Σ_{(param, axis) acted on by s} A[axis→0, rest flattened] · (B with the other sites applied)[...]ᵀ,
    g_s = argmax_{g ∈ G_s} ⟨g, C_s⟩,

until a full round improves no site by more than ``tol`` (at most ``max_iter`` rounds). A site that acts on two axes
of one weight (a square residual mixing h + W·h) keeps itself at the identity on the other axis while it is solved,
so for such weights the result is a local maximiser of a linearised term, not the exact optimum. The maximiser is a
linear assignment for permutation sites (Git Re-Basin), and an orthogonal Procrustes rotation R = UVᵀ for isotropic
(orthogonal) sites, block-wise for block-orthogonal ones, which no permutation-only tool can do. A site's cost
matrix depends only on the sites that share a parameter with it, so a site whose neighbours did not change since its
last solve is not solved again (same answer).

Permutation sites start from a greedy pass in graph order that matches each site's producer rows given the
already matched input axes (layer-wise matching); descent from there converges in a few rounds to better optima
than from the identity. Orthogonal sites start from the eigenbases of their Gram matrices (exact for a rotated
copy). Positive scalings of ReLU sites are not matched; bring both networks to
``canonicalise(..., scaling="balanced")`` first if they may differ by rescaling.

*Attention* (REFERENCE §8.3): the head permutation of an attention and its per-head query–key and value–output maps
are one wreath product, O(d_h) ≀ S_H (or GL(d_h) ≀ S_H), and are solved together as one unit: with the other sites
fixed, head i of A and head j of B score the best objective any per-head map reaches between them (the nuclear norm
‖C_ij‖_* of their d_h × d_h cost for orthogonal maps, Σ_planes |·| for RoPE's plane rotations, or the inner product
of the map-invariant products W_Q·W_Kᵀ and W_V·W_O for invertible maps); a linear assignment on these scores picks
the head permutation, then each assigned pair gets its map (Procrustes, plane rotations, or the least-squares
Sylvester solution for ``group="general_linear"``). Choosing the per-head maps before the heads, as independent
sites, locks onto wrong heads. With grouped-query attention the unit permutes K/V groups with their query heads, and
the query heads within a group are separate permutation sites of the descent.

*Activation matching* solves each site independently with C_s = Z_Aᵀ Z_B, the correlation of the features the
site's consumers read, over ``data``. Attention-internal sites (heads, query groups, per-head maps) have no such
features; they are then matched by weights as above, given the activation-matched sites.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from isotorch.params import align, symmetries, sample_element, transform
    >>> a = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    >>> x = torch.randn(8, 4, dtype=torch.float64)
    >>> b = transform(a, sample_element(symmetries(a, x), torch.Generator().manual_seed(0)))
    >>> result = align(a, b, x=x)
    >>> torch.allclose(result.model[0].weight, a[0].weight)
    True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from isotorch import groups as _groups
from isotorch._util import as_generator, check_choice, json_safe
from isotorch.params import _solvers
from isotorch.params._compat import batches, check_same_architecture, first_inputs, run_checked
from isotorch.params._element import Element
from isotorch.params._errors import SymmetryError
from isotorch.params._sites import Action, Site, Symmetries, symmetries
from isotorch.params._trace import evaluation
from isotorch.params._transform import _inverse_transpose, act, apply_element, transform

logger = logging.getLogger(__name__)

__all__ = ["AlignResult", "align"]

METHODS = ("weights", "activations")
PER_HEAD = ("query_key", "value_output")
ATTENTION = ("heads", "query_group", *PER_HEAD)


@dataclass(frozen=True)
class AlignResult:
    """The result of :func:`align`.

    Attributes:
        model: the aligned copy of model B (same function as B, verified).
        element: the :class:`~isotorch.params.Element` that maps B to the aligned copy.
        method: ``"weights"`` or ``"activations"``.
        objective_before, objective_after: Σ⟨θ_A, θ_B⟩ over the parameters the aligned sites touch (weights), or
            Σ_s ⟨Z_A, Z_B⟩/N (activations), before and after alignment.
        distance_before, distance_after: ‖θ_A − θ_B‖ over all floating parameters, before and after.
        iterations: coordinate-descent rounds (weights; 1 for activations).
        groups: site → the group key the site was aligned over.
        skipped: site → why it was not aligned.
    """

    model: nn.Module = field(repr=False)
    element: Element = field(repr=False)
    method: str
    objective_before: float
    objective_after: float
    distance_before: float
    distance_after: float
    iterations: int
    groups: dict[str, str]
    skipped: dict[str, str]

    def to_dict(self) -> dict:
        """A JSON-ready dict (without the model; the element as nested lists)."""
        return json_safe(
            {
                "method": self.method,
                "objective_before": self.objective_before,
                "objective_after": self.objective_after,
                "distance_before": self.distance_before,
                "distance_after": self.distance_after,
                "iterations": self.iterations,
                "groups": dict(self.groups),
                "skipped": dict(self.skipped),
                "element": self.element.to_dict(),
            }
        )


def _site_group(site: Site, group: str | dict | None) -> tuple[str | None, str | None]:
    """The group key to align ``site`` over, or (None, reason)."""
    if not site.free:
        return None, f"{site.status}: {site.reason}"
    requested = group.get(site.name) if isinstance(group, dict) else group
    if requested is None and site.structure in _solvers.STRUCTURED:
        return site.structure, None
    if requested == "general_linear":
        if site.kind in PER_HEAD and site.general_linear:
            return "general_linear", None
        why = f"general_linear is aligned only at per-head attention maps; {site.name!r} is {site.kind} ({site.group})"
        if isinstance(group, dict):
            raise ValueError(why)
        return None, why
    if requested is None:
        key = _solvers.best_compact(site.groups, site.maximal, site.general_linear)
        if key is None:
            return None, f"no compact group to match over ({site.group})"
        return key, None
    key = _groups.get(requested).key
    if _groups.get(key).name not in _solvers.MATCHABLE:
        raise ValueError(f"group must be one of {', '.join(_solvers.MATCHABLE)} or general_linear, got {requested!r}")
    if key not in site.groups and not site.general_linear:
        if isinstance(group, dict):
            raise ValueError(f"the requested group {key} is not a symmetry of site {site.name!r} ({site.group})")
        return None, f"the requested group {key} is not a symmetry of the site ({site.group})"
    return key, None


def _moved(t: torch.Tensor, a: Action, n: int) -> torch.Tensor:
    """The slice of ``t`` an action touches, with its features first: (n, everything else)."""
    sa = a.axis if a.slice_axis is None else a.slice_axis
    stop = t.shape[sa] if a.stop is None else a.stop
    seg = t.narrow(sa, a.start, stop - a.start)
    return seg.movedim(a.axis, 0).reshape(n, -1)


class _WeightMatcher:
    def __init__(self, syms: Symmetries, params_a, params_b, sites: dict[str, str], generator):
        self.syms = syms
        self.a = params_a
        self.b = params_b
        self.sites = sites  # site name -> group key
        self.generator = generator
        self.current: dict[str, torch.Tensor] = {}
        self.version = dict.fromkeys(sites, 0)
        # which sites act on each parameter
        self.on_param: dict[str, list[tuple[str, Action]]] = {}
        for name in sites:
            for act_ in syms[name].actions:
                self.on_param.setdefault(act_.param, []).append((name, act_))
        self.neighbours = {
            name: sorted({other for a in syms[name].actions for other, _ in self.on_param[a.param] if other != name})
            for name in sites
        }
        self.solved_at: dict[str, tuple] = {}
        self.terms: dict[tuple, tuple] = {}
        self.inverse_t: dict[str, tuple[int, torch.Tensor]] = {}
        self.units = _head_units(syms, sites)
        self.unit_of = {m: uid for uid, unit in self.units.items() for m in unit.sites}
        for uid, unit in self.units.items():
            self.neighbours[uid] = sorted({o for m in unit.sites for o in self.neighbours[m] if o not in unit.sites})

    def _mat(self, name: str, action: Action) -> torch.Tensor:
        """The current element of a site as it acts on ``action``'s parameter: g, or g⁻ᵀ on consumer and dual
        actions (equal to g for the orthogonal groups; invertible per-head maps need the inverse)."""
        g = self.current[name]
        if action.kind in ("out", "passenger") or self.sites[name] != "general_linear":
            return g
        cached = self.inverse_t.get(name)
        if cached is None or cached[0] != self.version[name]:
            cached = (self.version[name], _inverse_transpose(g))
            self.inverse_t[name] = cached
        return cached[1]

    def _compact(self, name: str) -> bool:
        key = self.sites[name]
        return key not in ("general_linear", *_solvers.STRUCTURED) and _groups.get(key).name in (
            "orthogonal",
            "special_orthogonal",
        )

    def forward_init(self) -> None:
        """Start the permutation sites with a greedy pass in graph order that matches each site's producer rows
        (weights and biases, with the already matched input axes applied) — layer-wise matching. Descent from
        there reaches better optima than from the identity, where the consumer terms of unmatched later layers are
        noise."""
        for name, key in self.sites.items():
            if key not in ("permutation", "signed_permutation") or name in self.unit_of:
                continue
            c = self.cost(name, kinds=("out", "passenger"))
            if c is None:
                continue
            self.current[name] = _solvers.solve(c, key)
            self.version[name] += 1

    def cost(self, name: str, known: set[str] | None = None, kinds=None) -> torch.Tensor | None:
        """C_s with the other sites at their current elements; with ``known``, only the actions whose parameter
        is acted on by no site outside ``known`` (``None`` if there is no such action)."""
        site = self.syms[name]
        n = site.size
        total = None
        for a in site.actions:
            if known is not None and any(o != name and o not in known for o, _ in self.on_param[a.param]):
                continue
            if kinds is not None and a.kind not in kinds:
                continue
            others = [(o, oa) for o, oa in self.on_param[a.param] if o != name and o in self.current]
            key = tuple((o, self.version[o]) for o, _ in others)
            cached = self.terms.get((name, a))
            if cached is not None and cached[0] == key:
                c = cached[1]
            else:
                tb = self.b[a.param]
                for other, other_action in others:
                    tb = act(tb, self._mat(other, other_action), other_action)
                c = _moved(self.a[a.param], a, n) @ _moved(tb, a, n).mT
                self.terms[(name, a)] = (key, c)  # a term changes only when a site sharing its parameter does
            total = c if total is None else total + c
        return total

    def spectral_init(self) -> None:
        """Start each orthogonal site at the rotation that matches the eigenbases of its Gram matrices.

        S_s = Σ_actions M·Mᵀ (M the parameter slice with the site's features first) transforms as S → R·S·Rᵀ under
        the site's own rotation R and is unchanged by the rotations and permutations of the other sites, so for
        a rotated copy the eigenvectors of S_A and S_B agree up to signs: g = V_A·D·V_Bᵀ. The signs D are chosen to
        maximise the terms whose other axes are already fixed (sites are visited in graph order). Coordinate
        descent from there only has to polish; from the identity it gets stuck in reflected local optima.
        """
        done: set[str] = set()
        fixed = {o for o in self.sites if not self._compact(o) and o not in self.unit_of}
        for name, key in self.sites.items():
            if name in fixed or name in self.unit_of:
                continue
            site = self.syms[name]
            sa = sb = None
            # invertible per-head maps change M·Mᵀ of the projections they act on: leave those out when others remain
            gl = {a.param for o, k in self.sites.items() if k == "general_linear" for a in self.syms[o].actions}
            actions = [a for a in site.actions if a.param not in gl] or list(site.actions)
            for a in actions:
                ma = _moved(self.a[a.param], a, site.size).double()
                mb = _moved(self.b[a.param], a, site.size).double()
                sa = ma @ ma.mT if sa is None else sa + ma @ ma.mT
                sb = mb @ mb.mT if sb is None else sb + mb @ mb.mT
            va = torch.linalg.eigh(sa).eigenvectors
            vb = torch.linalg.eigh(sb).eigenvectors
            # signs from the terms no unsolved site touches (embeddings, a head), else from those of fixed sites
            c = self.cost(name, known=done)
            if c is None:
                c = self.cost(name, known=done | fixed)
            if c is None:
                c = self.cost(name)
            assert c is not None  # a site has actions
            overlap = torch.diagonal(va.mT @ c.double() @ vb)
            d = torch.where(overlap < 0, -1.0, 1.0).to(torch.float64)
            if (
                _groups.get(key).name == "special_orthogonal"
                and torch.linalg.det(va) * torch.linalg.det(vb) * d.prod() < 0
            ):
                d[overlap.abs().argmin()] *= -1
            self.current[name] = (va * d) @ vb.mT
            self.version[name] += 1
            done.add(name)

    def solve_unit(self, uid: str, tol: float) -> bool:
        """Solve one attention's heads, query groups and per-head maps jointly (module docstring); whether the
        objective improved."""
        unit = self.units[uid]
        members = set(unit.sites)
        touched = {a.param for kind in unit.kinds for name in kind for a in self.syms[name].actions}
        others = {
            o: self.current[o]
            for o in self.sites
            if o in self.current and o not in members and any(a.param in touched for a in self.syms[o].actions)
        }
        tb = {p: self.b[p] for p in touched}
        tb.update(apply_element(tb, self.syms, others, skip_missing=True))  # B with every other site applied
        n_heads, rep = len(unit.kinds[0]), unit.rep
        kinds = []
        inner = torch.zeros(n_heads, n_heads, rep, rep, dtype=torch.float64)
        for names, key in zip(unit.kinds, unit.keys, strict=True):
            pa, sa = _head_slices(self.syms, names, self.a, rep)
            pb, sb = _head_slices(self.syms, names, tb, rep)
            pp = torch.einsum("irdx,jsex->ijrsde", pa, pb)  # per query head: (q or o) of A · of Bᵀ
            ss = torch.einsum("idx,jex->ijde", sa, sb)  # per K/V head: (k or v) of A · of Bᵀ
            if rep > 1:  # per query-head pair: the query heads' own best objective (with the K/V heads' for GL)
                inner += _score(pp, ss[:, :, None, None], key) if key == "general_linear" else _score(pp, 0, key)
            kinds.append((names, key, pp, ss, pa, pb, sa, sb))
        sigma = torch.zeros(n_heads, n_heads, rep, dtype=torch.long)
        if rep > 1:  # which query head of B's group j goes with query head r of A's group i
            for i in range(n_heads):
                for j in range(n_heads):
                    sigma[i, j] = _solvers.assignment(inner[i, j])
        scores = torch.zeros(n_heads, n_heads, dtype=torch.float64)
        terms = []
        for names, key, pp, ss, pa, pb, sa, sb in kinds:
            per_query = torch.stack(
                [
                    torch.stack([pp[i, j, torch.arange(rep), sigma[i, j]].sum(0) for j in range(n_heads)])
                    for i in range(n_heads)
                ]
            )
            # query heads are the "out" side of a query–key map (keys are "dual"); output columns are the "in"
            # side of a value–output map (values are "out")
            if names[0] in unit.query_key:
                cx, cy = per_query, ss
                x_b, y_a = torch.einsum("jrdx,jrex->jde", pb, pb), torch.einsum("idx,iex->ide", sa, sa)
                y_b = torch.einsum("jdx,jex->jde", sb, sb)
            else:
                cx, cy = ss, per_query
                x_b, y_a = torch.einsum("jdx,jex->jde", sb, sb), torch.einsum("irdx,irex->ide", pa, pa)
                y_b = torch.einsum("jrdx,jrex->jde", pb, pb)
            scores += _score(cx, cy, key)
            terms.append((names, key, cx, cy, y_a, x_b, y_b))
        if unit.heads is not None:
            perm = _solvers.assignment(scores)
            old_perm = _index(self.current.get(unit.heads), n_heads)
        else:
            perm = old_perm = torch.arange(n_heads)
        new: dict[str, torch.Tensor] = {}
        new_value = old_value = 0.0
        stale = False  # the current query order of a group is none of the candidates scored: take the new solution
        for i in range(n_heads):
            j, j_old = int(perm[i]), int(old_perm[i])
            if rep > 1:
                new[unit.groups[i]] = sigma[i, j]
                # the old value: B's group at i under the query-head order the current element gives it
                old_sigma = _index(self.current.get(unit.groups[i]), rep)
            for names, key, cx, cy, y_a, x_b, y_b in terms:
                if key is None:
                    g = None
                elif key == "general_linear":
                    g = _solvers.general_linear(cx[i, j] + cy[i, j], y_a[i], x_b[j])
                else:
                    g = _solvers.solve(cx[i, j] + cy[i, j], key)
                if g is not None:
                    new[names[i]] = g
                new_value += _pair_value(g, cx[i, j], cy[i, j], x_b[j], y_b[j])
                if rep > 1 and not torch.equal(old_sigma, sigma[i, j_old]):
                    stale = True
                    continue
                old_g = self.current.get(names[i]) if key is not None else None
                old_value += _pair_value(old_g, cx[i, j_old], cy[i, j_old], x_b[j_old], y_b[j_old])
        if not stale and new_value <= old_value + max(tol, 1e-9) * max(1.0, abs(old_value)):
            return False
        if unit.heads is not None:
            new[unit.heads] = perm
        for name, g in new.items():
            self.current[name] = g
            self.version[name] += 1
        return True

    def run(self, max_iter: int, tol: float) -> int:
        names = [n for n in self.sites if n not in self.unit_of] + list(self.units)
        rounds = 0
        for rounds in range(1, max_iter + 1):  # noqa: B007 - the count is returned
            progress = False
            order = torch.randperm(len(names), generator=self.generator).tolist()
            for i in order:
                name = names[i]
                key = tuple(self.version[o] for o in self.neighbours[name])
                if self.solved_at.get(name) == key:
                    continue
                if name in self.units:
                    self.solved_at[name] = key
                    progress |= self.solve_unit(name, tol)
                    continue
                c = self.cost(name)
                assert c is not None  # a site has actions
                g_new = _solvers.solve(c, self.sites[name])
                self.solved_at[name] = key
                old = self.current.get(name)
                old_value = _solvers.value(old, c) if old is not None else float(torch.diagonal(c).double().sum())
                new_value = _solvers.value(g_new, c)
                # rotations converge asymptotically: stop polishing at a relative gain of 1e-9
                eps = tol if self.sites[name] in ("permutation", "signed_permutation") else max(tol, 1e-9)
                if new_value > old_value + eps * max(1.0, abs(old_value)):
                    self.current[name] = g_new
                    self.version[name] += 1
                    progress = True
            if not progress:
                break
        return rounds


@dataclass
class _HeadUnit:
    """One attention's sites aligned jointly: the head site (``None`` when it is not aligned), the query-group
    sites by position (grouped-query attention, ``rep`` query heads per K/V head), and the per-head sites by
    position: ``kinds`` is [[qk0, qk1, …], [vo0, vo1, …]], ``keys`` the group each kind is aligned over (``None``:
    kept at the identity)."""

    heads: str | None
    groups: list[str]
    rep: int
    kinds: list[list[str]]
    keys: list[str | None]
    query_key: frozenset[str]

    @property
    def sites(self) -> list[str]:
        chosen = [n for names, key in zip(self.kinds, self.keys, strict=True) if key is not None for n in names]
        return ([self.heads] if self.heads is not None else []) + self.groups + chosen


def _head_units(syms: Symmetries, sites: dict[str, str]) -> dict[str, _HeadUnit]:
    """One unit per attention whose head site or per-head sites are aligned."""

    def position(name: str) -> int:
        return int(name.rpartition(".")[2].lstrip("qkvogrup"))

    prefixes: dict[str, dict[str, list[str]]] = {}
    for site in syms:
        if site.kind in (*PER_HEAD, "query_group"):
            prefixes.setdefault(site.name.rpartition(".")[0], {}).setdefault(site.kind, []).append(site.name)
    units = {}
    for prefix, by_kind in prefixes.items():
        heads = f"{prefix}.heads" if f"{prefix}.heads" in sites else None
        names = [sorted(by_kind[k], key=position) for k in PER_HEAD if k in by_kind]
        groups = sorted(by_kind.get("query_group", []), key=position)
        keys = []
        for v in names:
            chosen = {sites.get(n) for n in v}
            if len(chosen) > 1:
                raise ValueError(f"the per-head sites of {prefix} must all be aligned over one group (or none)")
            keys.append(chosen.pop())
        if groups and not all(g in sites for g in groups):
            groups = []  # query heads kept in place: a unit still aligns heads and maps
        if heads is None and all(k is None for k in keys):
            continue
        rep = syms[groups[0]].size if groups else 1  # without group sites a K/V head's query heads stay together
        units[heads or f"{prefix}.per_head"] = _HeadUnit(
            heads, groups, rep, names, keys, frozenset(by_kind.get("query_key", []))
        )
    return units


def _head_slices(syms: Symmetries, names: list[str], params: dict, rep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: the slices of its query heads (query rows of a query–key map, output columns of a
    value–output map) as (H, rep, d_h, ·), and of its K/V head (key rows; value rows) as (H, d_h, ·), features
    first. A query head's actions are consecutive in the site's actions (``rep`` equal chunks)."""
    per_query, shared = [], []
    for name in names:
        site = syms[name]
        query_side = ("out", "passenger") if site.kind == "query_key" else ("in",)
        q = [_moved(params[a.param], a, site.size).double() for a in site.actions if a.kind in query_side]
        k = [_moved(params[a.param], a, site.size).double() for a in site.actions if a.kind not in query_side]
        chunk = len(q) // rep
        per_query.append(torch.stack([torch.cat(q[r * chunk : (r + 1) * chunk], 1) for r in range(rep)]))
        shared.append(torch.cat(k, 1) if k else torch.zeros(site.size, 0, dtype=torch.float64))
    return torch.stack(per_query), torch.stack(shared)


def _score(cx: torch.Tensor, cy: torch.Tensor | float, key: str | None) -> torch.Tensor:
    """The best objective a per-head map in ``key`` reaches between two heads with costs C_x, C_y (the last two
    axes): the nuclear norm of C_x + C_y (orthogonal maps), Σ_planes |·| (RoPE's plane rotations), the trace
    (no map), or for invertible maps the inner product ⟨C_x, C_y⟩ of the map-invariant products."""
    if key == "general_linear":
        return (cx * cy).sum((-2, -1))
    c = cx + cy
    if key is None:
        return torch.diagonal(c, dim1=-2, dim2=-1).sum(-1)
    if key == "rotary_planes":
        return _solvers.rotary_value(c)
    return torch.linalg.svdvals(c).sum(-1)


def _index(g: torch.Tensor | None, n: int) -> torch.Tensor:
    """A permutation site's current element as an index vector (the identity when unset)."""
    if g is None:
        return torch.arange(n)
    return g if g.ndim == 1 else g.abs().argmax(1)


def _pair_value(g, cx, cy, s_out_b, s_in_b) -> float:
    """−½‖A − g·B‖² of one head pair up to a constant: ⟨g, C_x⟩ + ⟨g⁻ᵀ, C_y⟩ − ½(‖g·X_B‖² + ‖g⁻ᵀ·Y_B‖²)."""
    if g is None:
        return float(torch.diagonal(cx + cy).sum() - 0.5 * (torch.trace(s_out_b) + torch.trace(s_in_b)))
    g = torch.eye(len(g), dtype=torch.float64)[g] if g.ndim == 1 else g.to(torch.float64)
    g_inv_t = torch.linalg.inv(g).mT
    return float(
        (g * cx).sum() + (g_inv_t * cy).sum() - 0.5 * ((g @ s_out_b * g).sum() + (g_inv_t @ s_in_b * g_inv_t).sum())
    )


def _float_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}


def _inner(a: dict, b: dict, names) -> float:
    return float(sum(torch.sum(a[n] * b[n], dtype=torch.float64) for n in names))


def _distance(a: dict, b: dict) -> float:
    return float(sum(torch.sum((a[n] - b[n]).pow(2), dtype=torch.float64) for n in a) ** 0.5)


def _consumer_features(model: nn.Module, syms: Symmetries, names: list[str]) -> tuple[list, dict]:
    """Hooks that capture the features each site's consumers read, as per-site lists of (N·inner, n) blocks."""
    hooks: list = []
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    modules = dict(model.named_modules())
    for name in names:
        site = syms[name]
        for consumer in site.consumers:
            act_ = next(
                (a for a in site.actions if a.kind == "in" and a.param.rsplit(".", 1)[0] in (consumer, f"{consumer}.")),
                None,
            )
            if act_ is None:  # a tied reader (an LM head sharing the embedding) is acted on through its twin
                continue

            def hook(module, args, kwargs, _name=name, _act=act_, _site=site):
                x = args[0] if args else next(iter(kwargs.values()))
                if isinstance(module, nn.modules.conv._ConvNd):
                    z = x.movedim(1, -1).reshape(-1, _site.size)
                else:
                    z = x.reshape(-1, _site.size, _act.inner).movedim(1, -1).reshape(-1, _site.size)
                captured[_name].append(z.detach())

            hooks.append(modules[consumer].register_forward_pre_hook(hook, with_kwargs=True))
    return hooks, captured


def _activation_costs(model_a, model_b, syms, names, data) -> dict[str, torch.Tensor]:
    costs: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    hooks_a, cap_a = _consumer_features(model_a, syms, names)
    hooks_b, cap_b = _consumer_features(model_b, syms, names)
    try:
        with evaluation(model_a), evaluation(model_b):
            for batch in batches(data):
                run_checked(model_a, batch[0])
                run_checked(model_b, batch[0])
                for name in names:
                    for za, zb in zip(cap_a[name], cap_b[name], strict=True):
                        c = za.double().mT @ zb.double()
                        costs[name] = c if name not in costs else costs[name] + c
                        counts[name] += za.shape[0]
                    cap_a[name].clear()
                    cap_b[name].clear()
    finally:
        for h in hooks_a + hooks_b:
            h.remove()
    return {k: v / max(counts[k], 1) for k, v in costs.items()}


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    method: str = "weights",
    data: torch.Tensor | Iterable[torch.Tensor | tuple[torch.Tensor, ...]] | None = None,
    *,
    x: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    group: str | dict[str, str] | None = None,
    max_iter: int = 100,
    tol: float = 1e-12,
    generator: torch.Generator | None = None,
    syms: Symmetries | None = None,
) -> AlignResult:
    """Align ``model_b`` to ``model_a`` by the symmetries of their sites; return the aligned copy of B.

    Args:
        model_a: the reference network.
        model_b: the network to align; same architecture and state-dict shapes as ``model_a``.
        method: ``"weights"`` (weight matching by coordinate descent, data-free) or ``"activations"`` (match the
            features each site's consumers read over ``data``).
        data: inputs for activation matching: a tensor, an ``(inputs, targets)`` pair, or an iterable of batches.
            For weight matching it is only used (its first batch) as the example input if ``x`` is not given.
        x: the example input used to find the sites and to verify the aligned model (default: the first batch of
            ``data``).
        group: the group to align every site over (e.g. ``"permutation"``), or a dict site → group; it must be a
            symmetry of the site. Default: each site's largest compact group (orthogonal for isotropic and
            linear sites and per-head attention maps, signed permutation for odd elementwise activations,
            permutation for ReLU/GELU, one rotation per frequency plane for RoPE query–key maps).
            ``"general_linear"`` fits invertible per-head query–key and value–output maps by least squares (only
            those sites take it).
        max_iter: the most coordinate-descent rounds (weight matching).
        tol: a round that improves no site by more than ``tol``·max(1, |objective|) ends the descent.
        generator: ``torch.Generator`` or ``None`` (torch's global RNG) for the random site order.
        syms: precomputed :func:`symmetries` of ``model_a`` (skips tracing).

    Returns:
        :class:`AlignResult` with the aligned model, the element, and the objective before and after.

    Raises:
        ValueError: different architectures or state dicts, an unknown method, missing example input or data, data
            that does not fit the model.
        SymmetryError: if the aligned model would compute a different function than B (never expected).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from isotorch.params import align
        >>> a = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).double()
        >>> b = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).double()
        >>> with torch.no_grad():  # B is A with its hidden neurons shuffled: the same function
        ...     perm = torch.arange(16).flip(0)
        ...     _ = b[0].weight.copy_(a[0].weight[perm]), b[0].bias.copy_(a[0].bias[perm])
        ...     _ = b[2].weight.copy_(a[2].weight[:, perm]), b[2].bias.copy_(a[2].bias)
        >>> result = align(a, b, x=torch.randn(8, 4, dtype=torch.float64))
        >>> torch.equal(result.model[0].weight, a[0].weight), torch.equal(b[0].weight, a[0].weight)
        (True, False)
    """
    check_choice(method, "method", METHODS)
    check_same_architecture(model_a, model_b)
    if method == "activations" and data is None:
        raise ValueError("method='activations' needs data= (inputs to collect the features on)")
    if syms is None:
        if x is None and data is None:
            raise ValueError("align needs an example input x= (or data=) to find the symmetry sites")
        example = x if x is not None else first_inputs(data)
        if not isinstance(example, (tuple, list)):
            with evaluation(model_a):
                run_checked(model_a, example, "x" if x is not None else "data")
        syms = symmetries(model_a, example)
    generator = as_generator(generator)

    chosen: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for site in syms:
        key, reason = _site_group(site, group)
        if key is None:
            skipped[site.name] = reason or "not aligned"
        else:
            chosen[site.name] = key

    if group is not None and not chosen and any(s.free for s in syms):
        raise ValueError(f"the requested group {group!r} is not a symmetry of any site: {skipped}")
    if isinstance(group, dict):
        unknown = set(group) - {s.name for s in syms}
        if unknown:
            raise KeyError(f"group names unknown sites {sorted(unknown)}; sites: {[s.name for s in syms]}")

    pa, pb = _float_params(model_a), _float_params(model_b)
    touched = sorted({a.param for name in chosen for a in syms[name].actions})
    iterations = 1
    if method == "weights":
        matcher = _WeightMatcher(syms, pa, pb, chosen, generator)
        matcher.spectral_init()
        matcher.forward_init()
        for uid in matcher.units:  # heads before the descent: its first stream polish would otherwise fit them
            matcher.solve_unit(uid, tol)
        iterations = matcher.run(max_iter, tol)
        matrices = dict(matcher.current)
        objective_before = _inner(pa, pb, touched)
    else:
        features = [n for n in chosen if syms[n].kind not in ATTENTION]
        costs = _activation_costs(model_a, model_b, syms, features, data)
        matrices = {}
        objective_before = 0.0
        for name, c in costs.items():
            g = _solvers.solve(c, chosen[name])
            objective_before += float(torch.diagonal(c).sum())
            if _solvers.value(g, c) > float(torch.diagonal(c).sum()) + tol * max(1.0, abs(float(c.trace()))):
                matrices[name] = g
        # attention-internal sites have no features a layer reads: match them by weights, given the matched stream
        matcher = _WeightMatcher(syms, pa, pb, chosen, generator)
        matcher.current.update(matrices)
        for uid in matcher.units:
            matcher.solve_unit(uid, tol)
        matrices.update({n: matcher.current[n] for n in chosen if syms[n].kind in ATTENTION and n in matcher.current})
    element = Element(syms, matrices)
    try:
        aligned = transform(model_b, element)
    except SymmetryError as err:
        raise SymmetryError(f"alignment produced an element that changes model_b's function: {err}") from err
    pn = _float_params(aligned)
    if method == "weights":
        objective_after = _inner(pa, pn, touched)
    else:
        objective_after = sum(
            _solvers.value(matrices[n], c) if n in matrices else float(torch.diagonal(c).sum())
            for n, c in costs.items()
        )
    return AlignResult(
        model=aligned,
        element=element,
        method=method,
        objective_before=objective_before,
        objective_after=objective_after,
        distance_before=_distance(pa, pb),
        distance_after=_distance(pa, pn),
        iterations=iterations,
        groups=chosen,
        skipped=skipped,
    )
