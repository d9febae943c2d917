"""The main job (``isotorch demo``): a matched elementwise/isotropic pair on scikit-learn's bundled digits.

The two models share their architecture and initial weights and differ only in their primitive family
(:func:`isotorch.convert`). Each is trained over several seeds; the job then reports, per family (mean ± 95% CI
over seeds):

- test accuracy and loss;
- the hidden-layer parameter symmetry the primitives induce: a random rotation W₁→QW₁, b₁→Qb₁, W₂→W₂Qᵀ of a
  hidden layer leaves the isotropic model's function unchanged and changes the elementwise one's;
- what the group does to the last hidden representation: its SRM curve in the standard basis, the basis-alignment
  and quantisation scores, and its effective rank (:mod:`isotorch.probes`);
- linear mode connectivity of two seeds' models: the loss barrier before and after aligning them by their
  parameter symmetry (permutations for the elementwise model, rotations for the isotropic one,
  :func:`isotorch.params.align`).

It writes ``metrics.jsonl``, PNG figures and ``report.html`` to the output folder.
"""

from __future__ import annotations

import copy
import html
import json
import math
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isotorch import audit, families, groups, params, probes
from isotorch.studies._data import load_digits
from isotorch.studies._stats import mean_ci

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

FAMILIES = ("elementwise", "isotropic")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo. Every field is recorded in the report."""

    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 30
    width: int = 64
    batch_size: int = 64
    lr: float = 3e-3
    test_fraction: float = 0.2

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        for name in ("epochs", "width", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (0 < self.lr < 10):
            raise ValueError(f"lr must be in (0, 10), got {self.lr!r}")
        if not (0 < self.test_fraction < 1):
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")


@dataclass(frozen=True)
class DemoResult:
    """Per-family summaries, per-seed curves, the primitive table and where the report was written."""

    config: DemoConfig
    summary: dict[str, dict[str, float]]
    curves: dict[str, list[list[float]]]
    primitives: list[dict] = field(default_factory=list)
    chains: dict[str, list[str]] = field(default_factory=dict)
    srm: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    lmc: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    report: Path | None = None

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "summary": self.summary,
            "primitives": self.primitives,
            "chains": self.chains,
            "srm": self.srm,
            "lmc": self.lmc,
            "report": str(self.report) if self.report else None,
        }


def _base_model(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, width),
        nn.Tanh(),
        nn.LayerNorm(width),
        nn.Linear(width, width),
        nn.Tanh(),
        nn.Linear(width, 10),
    )


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(-1) == y).float().mean().item()
    return loss, acc


def _train(model, data, config: DemoConfig, seed: int, on_epoch: Callable[[], None]) -> list[float]:
    x_train, y_train, x_test, y_test = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    curve = []
    for _ in range(config.epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=gen).split(config.batch_size):
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss.item()} (seed {seed})")
            opt.zero_grad()
            loss.backward()
            opt.step()
        curve.append(_evaluate(model, x_test, y_test)[1])
        on_epoch()
    return curve


def hidden_rotation_change(model: nn.Sequential, x: torch.Tensor, *, seed: int = 0) -> float:
    """Relative output change when the first hidden layer is rotated by a Haar-random Q (W₁→QW₁, b₁→Qb₁, and
    the next Linear layer W₂→W₂Qᵀ). About 1e-7 in float32 for an isotropic model; order 1 for an elementwise one.
    """
    linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    first, second = linears[0], linears[1]
    width = model[first].out_features
    q = groups.get("orthogonal").sample(width, generator=torch.Generator().manual_seed(seed))
    rotated = copy.deepcopy(model).eval()
    with torch.no_grad():
        rotated[first].weight.copy_(q @ rotated[first].weight)
        rotated[first].bias.copy_(q @ rotated[first].bias)
        rotated[second].weight.copy_(rotated[second].weight @ q.T)
    model.eval()
    with torch.no_grad():
        a, b = model(x), rotated(x)
    return float((a - b).norm() / a.norm())


def run_demo(
    out_dir: str | Path = "runs/demo",
    config: DemoConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Train the matched pair over ``config.seeds``, measure, and write the report into ``out_dir``.

    Args:
        out_dir: output folder (created; files in it are overwritten).
        config: settings (default :class:`DemoConfig`).
        progress: optional callback ``progress(done, total)`` in epochs, for a progress bar.
    """
    config = config or DemoConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are tiny: one thread avoids synchronisation overhead
    try:
        return _run(Path(out_dir), config, progress)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, config: DemoConfig, progress) -> DemoResult:
    out.mkdir(parents=True, exist_ok=True)
    data = load_digits(test_fraction=config.test_fraction, seed=0)
    total = len(FAMILIES) * len(config.seeds) * config.epochs
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    curves: dict[str, list[list[float]]] = {f: [] for f in FAMILIES}
    finals: dict[str, dict[str, list[float]]] = {f: {} for f in FAMILIES}
    srm_curves: dict[str, list[torch.Tensor]] = {f: [] for f in FAMILIES}
    trained: dict[str, list[nn.Module]] = {f: [] for f in FAMILIES}
    x_test = data.x_test
    with (out / "metrics.jsonl").open("w") as log:
        for seed in config.seeds:
            torch.manual_seed(seed)
            base = _base_model(config.width)
            for name in FAMILIES:
                model = copy.deepcopy(base if name == "elementwise" else families.convert(base, name))
                curve = _train(model, data, config, seed, tick)
                loss, acc = _evaluate(model, x_test, data.y_test)
                record = {"test_accuracy": acc, "test_loss": loss}
                record["hidden_rotation_change"] = hidden_rotation_change(model, x_test, seed=seed)
                hidden = _last_hidden(model, x_test)
                spot = probes.srm(hidden)
                record["alignment_score"] = probes.alignment_score(hidden, n_bootstrap=50, generator=seed).value
                record["quantisation_score"] = probes.quantisation_score(hidden, n_bootstrap=50, generator=seed).value
                record["effective_rank"] = probes.effective_rank(hidden - hidden.mean(0))
                for key, value in record.items():
                    finals[name].setdefault(key, []).append(value)
                log.write(json.dumps({"seed": seed, "family": name, **record}) + "\n")
                curves[name].append(curve)
                srm_curves[name].append(spot.mean)
                trained[name].append(model)
        lmc = _connectivity(trained, data) if len(config.seeds) > 1 else {}
        for name, entry in lmc.items():
            log.write(json.dumps({"family": name, "seeds": list(config.seeds[:2]), **_scalars(entry)}) + "\n")

    summary = {
        name: {
            f"{key}_{stat}": value
            for key, values in finals[name].items()
            for stat, value in (("mean", mean_ci(values).mean), ("ci95", mean_ci(values).ci95))
        }
        for name in FAMILIES
    }
    for name, entry in lmc.items():
        summary[name].update(_scalars(entry))
    srm = {
        name: {
            "angles": spot.angles.tolist(),
            "mean": torch.stack(srm_curves[name]).mean(0).tolist(),
            "baseline": [spot.baseline] * len(spot.angles),
        }
        for name in FAMILIES
    }
    table, chains = _primitive_table({name: models[0] for name, models in trained.items()}, x_test[:64])
    result = DemoResult(config, summary, curves, table, chains, srm, lmc)
    report = _write_report(out, result)
    return DemoResult(config, summary, curves, table, chains, srm, lmc, report)


def _last_hidden(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The output of the last primitive before the classifier: the representation the probes measure."""
    model.eval()
    with torch.no_grad():
        return model[:-1](x)


def _connectivity(trained: dict[str, list[nn.Module]], data) -> dict[str, dict[str, list[float]]]:
    """Loss along the linear path between the first two seeds' models, before and after alignment."""
    x_train, _, x_test, y_test = data
    out = {}
    for name, (model_a, model_b) in ((n, models[:2]) for n, models in trained.items()):
        aligned = params.align(model_a, model_b, method="weights", x=x_train[:256]).model
        before = params.barrier(model_a, model_b, nn.functional.cross_entropy, (x_test, y_test), steps=11)
        after = params.barrier(model_a, aligned, nn.functional.cross_entropy, (x_test, y_test), steps=11)
        out[name] = {
            "alphas": list(before.alphas),
            "loss_before": list(before.losses),
            "loss_after": list(after.losses),
            "barrier_before": [before.barrier],
            "barrier_after": [after.barrier],
        }
    return out


def _scalars(entry: dict[str, list[float]]) -> dict[str, float]:
    return {key: values[0] for key, values in entry.items() if key.startswith("barrier")}


def _primitive_table(models: dict[str, nn.Module], x: torch.Tensor) -> tuple[list[dict], dict[str, list[str]]]:
    """Measure (not declare) the group of every primitive site of each trained model with the audit.

    Returns the rows (site, then type and maximal groups per family) and each family's G2 summary lines: the
    hidden-layer parameter symmetry between consecutive Linear layers, verified on the model.
    """
    audits = {name: audit.audit_model(model, x) for name, model in models.items()}
    sites = {name: {row.path: row for row in result.sites} for name, result in audits.items()}
    rows = []
    for path in sites["elementwise"]:
        row = {"site": path}
        for name in FAMILIES:
            site = sites[name][path]
            row[name] = site.type
            row[f"{name} group (measured)"] = ", ".join(audit.sort_groups(site.maximal)) or "—"
        rows.append(row)
    chains = {
        name: [
            f"{c['first']} → {c['last']} (width {c['width']}): {', '.join(c['groups']) or 'trivial'}"
            f" — {'verified' if c['verified'] else 'NOT verified'} on the trained model"
            for c in result.summary()["G2"]
        ]
        for name, result in audits.items()
    }
    return rows, chains


#: (key, label, scale) of the per-seed metrics shown in the terminal and the report (mean ± 95% CI).
METRICS = (
    ("test_accuracy", "test accuracy (%)", 100.0),
    ("test_loss", "test loss", 1.0),
    ("hidden_rotation_change", "output change under a hidden rotation", 1.0),
    ("alignment_score", "basis alignment", 1.0),
    ("quantisation_score", "quantisation", 1.0),
    ("effective_rank", "effective rank", 1.0),
)


def format_metric(summary: dict[str, float], key: str, scale: float = 1.0) -> str:
    """``mean ± ci95`` of one metric of a family's summary, in a precision that suits its size (no ± for a single
    seed, whose interval is undefined)."""
    mean, ci = summary[f"{key}_mean"] * scale, summary[f"{key}_ci95"] * scale
    small, large = 0 < abs(mean) < 1e-3, abs(mean) >= 10
    text = f"{mean:.1e}" if small else f"{mean:.2f}" if large else f"{mean:.3g}"
    if math.isnan(ci):
        return text
    return text + (f" ± {ci:.1e}" if small else f" ± {ci:.2f}" if large else f" ± {ci:.2g}")


_COLOURS = {"elementwise": "tab:orange", "isotropic": "tab:blue"}


def _figure(path: Path, title: str, xlabel: str, ylabel: str, draw) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_report(out: Path, result: DemoResult) -> Path:
    def accuracy(ax):
        for name, runs in result.curves.items():
            arr = np.array(runs) * 100
            epochs = np.arange(1, arr.shape[1] + 1)
            ax.plot(
                epochs, arr.mean(0), color=_COLOURS[name], label=f"{name} (mean; band: min–max of {len(runs)} seeds)"
            )
            ax.fill_between(epochs, arr.min(0), arr.max(0), color=_COLOURS[name], alpha=0.2)

    def spotlight(ax):
        for name, curve in result.srm.items():
            ax.plot(curve["angles"], curve["mean"], color=_COLOURS[name], label=name)
        baseline = next(iter(result.srm.values()))
        ax.plot(baseline["angles"], baseline["baseline"], "k--", lw=1, label="isotropic reference")
        ax.set_xticks(np.arange(5) * np.pi / 2, ["0", "π/2", "π", "3π/2", "2π"])

    def connectivity(ax):
        for name, entry in result.lmc.items():
            ax.plot(entry["alphas"], entry["loss_before"], ":", color=_COLOURS[name], label=f"{name}, unaligned")
            ax.plot(entry["alphas"], entry["loss_after"], "-", color=_COLOURS[name], label=f"{name}, aligned")

    figures = [
        (
            "accuracy.png",
            "test accuracy per epoch",
            accuracy,
            ("test accuracy by family", "epoch", "test accuracy (%)"),
        ),
        (
            "srm.png",
            "spotlight resonance of the last hidden layer in the standard basis (mean over planes and seeds): peaks "
            "at multiples of π/2 mean neuron-aligned features, a flat curve at the reference means isotropy",
            spotlight,
            ("SRM, last hidden layer", "spotlight angle θ", "fraction inside the spotlight"),
        ),
    ]
    if result.lmc:
        figures.append(
            (
                "lmc.png",
                "test loss along the linear path between two seeds' models, before and after aligning them by their "
                "parameter symmetry (permutations for elementwise, rotations for isotropic)",
                connectivity,
                ("linear mode connectivity", "interpolation λ", "test loss"),
            )
        )
    for filename, _, draw, (title, xlabel, ylabel) in figures:
        _figure(out / filename, title, xlabel, ylabel, draw)

    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in METRICS)
    rows = "".join(
        f"<tr><td>{name}</td>" + "".join(f"<td>{format_metric(s, k, sc)}</td>" for k, _, sc in METRICS) + "</tr>"
        for name, s in result.summary.items()
    )
    lmc_rows = "".join(
        f"<tr><td>{name}</td><td>{result.summary[name]['barrier_before']:.4f}</td>"
        f"<td>{result.summary[name]['barrier_after']:.4f}</td></tr>"
        for name in result.lmc
    )
    lmc_table = (
        "<h2>Linear mode connectivity</h2><table><tr><th>family</th><th>barrier before alignment</th>"
        f"<th>barrier after alignment</th></tr>{lmc_rows}</table><p>Barrier: max over λ of the test loss minus the "
        f"mean of the endpoint losses, between the models of seeds {result.config.seeds[0]} and "
        f"{result.config.seeds[1]}.</p>"
        if result.lmc
        else "<p>Linear mode connectivity needs at least two seeds.</p>"
    )
    prim_head = "".join(f"<th>{html.escape(k)}</th>" for k in result.primitives[0]) if result.primitives else ""
    prim = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in r) + "</tr>" for r in result.primitives
    )
    chains = "".join(f"<li>{name}: {html.escape(line)}</li>" for name, lines in result.chains.items() for line in lines)
    images = "".join(
        f'<figure><img src="{f}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for f, c, _, _ in figures
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>isotorch demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}figcaption{{font-size:90%;color:#444;max-width:720px}}</style>
</head><body>
<h1>isotorch demo: elementwise vs isotropic primitives on digits</h1>
<p>Two MLPs with the same architecture and initial weights, differing only in their primitive family, trained
with Adam on scikit-learn's bundled digits. Uncertainties are 95% confidence intervals over
{len(result.config.seeds)} seeds (t distribution).</p>
<h2>Results</h2>
<table><tr><th>family</th>{head}</tr>{rows}</table>
<p><em>Output change under a hidden rotation</em>: W₁→QW₁, b₁→Qb₁, W₂→W₂Qᵀ with a Haar-random Q on the first hidden
layer; this is a parameter symmetry exactly when every primitive at that layer is O(n)-equivariant.
<em>Basis alignment</em> and <em>quantisation</em> (isotorch.probes) measure how far the last hidden layer's
activations depart from isotropy in the standard basis (0 for isotropic data); <em>effective rank</em> is the
Roy–Vetterli rank of its centred activations.</p>
{lmc_table}
{images}
<h2>Audit of the trained models (seed {result.config.seeds[0]})</h2>
<p>The maximal group of every primitive site, measured by <code>isotorch.audit.audit_model</code> on test inputs (not
declared), and the hidden-layer parameter symmetry it induces between consecutive Linear layers (G2), applied to the
trained model and checked to leave its output unchanged.</p>
<table><tr>{prim_head}</tr>{prim}</table><ul>{chains}</ul>
<h2>Settings</h2><pre>{html.escape(json.dumps(asdict(result.config), indent=2))}</pre>
<h2>Environment</h2><pre>python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
