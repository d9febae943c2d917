import pytest
import torch
from torch import nn

from isotorch.probes import (
    ClassMoments,
    Collection,
    NearestCentreAgreement,
    collect,
    neural_collapse,
    neural_collapse_from_stats,
    srm,
)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3))


def labelled_batches(n_batches=5, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n_batches)]


def test_collect_on_small_mlp_matches_in_memory_statistics():
    model = mlp()
    data = labelled_batches()
    res = collect(model, data, ["1", "3"], reservoir_size=64, progress=False)
    assert isinstance(res, Collection) and list(res) == ["1", "3"] and len(res) == 2
    assert res.n_inputs == 200 and res.n_batches == 5 and res.has_labels
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    model.eval()
    h = model[1](model[0](x)).detach().double()
    stats = res["1"]
    assert stats.dim == 16 and stats.output_shape == (16,) and stats.rows == 200
    assert torch.allclose(stats.moments.mean, h.mean(0), atol=1e-6)
    assert torch.allclose(stats.moments.covariance(), torch.cov(h.T), atol=1e-6)
    assert stats.classes.counts.tolist() == torch.bincount(y, minlength=3).tolist()
    assert len(stats.samples) == 64 and torch.equal(stats.samples.labels, y[stats.samples.indices])
    assert torch.allclose(stats.samples.values.double(), h[stats.samples.indices], atol=1e-6)
    assert torch.equal(res["1"].samples.indices, res["3"].samples.indices)  # same seed, same inputs
    assert res.to_dict()["layers"]["3"]["dim"] == 3
    with pytest.raises(KeyError, match="no layer"):
        res["0"]


def test_collect_restores_modes_and_runs_in_eval():
    model = mlp()
    model.train()
    model[2].eval()  # a mixed state must come back as it was
    data = labelled_batches(2)
    a = collect(model, data, ["2"], probes=("samples",), progress=False)
    b = collect(model, data, ["2"], probes=("samples",), progress=False)
    assert torch.equal(a["2"].samples.values, b["2"].samples.values)  # dropout off: deterministic
    assert model.training and model[0].training and not model[2].training
    assert torch.is_grad_enabled()


def test_max_samples_cuts_the_last_batch_and_progress_bar_runs(capsys):
    res = collect(mlp(), labelled_batches(), ["3"], max_samples=90, progress=True)
    assert res.n_inputs == 90 and res["3"].moments.count == 90 and res["3"].classes.count == 90
    capsys.readouterr()


def test_unlabelled_data_and_probe_selection():
    data = [torch.randn(10, 6) for _ in range(3)]
    res = collect(mlp(), data, "1", progress=False)
    assert not res.has_labels and res["1"].classes is None and res["1"].moments.count == 30
    with pytest.raises(ValueError, match="labels"):
        collect(mlp(), data, ["1"], probes=("classes",), progress=False)
    only = collect(mlp(), data, ["1"], probes=("moments",), progress=False)
    assert only["1"].samples is None
    with pytest.raises(ValueError, match="unknown probe"):
        collect(mlp(), data, ["1"], probes=("histogram",), progress=False)


def test_conv_feature_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU())
    data = [(torch.randn(5, 2, 6, 6), torch.randint(0, 3, (5,))) for _ in range(2)]
    flat = collect(model, data, ["1"], progress=False)
    assert flat["1"].dim == 4 * 36 and flat["1"].rows == 10 and flat["1"].output_shape == (4, 6, 6)
    sites = collect(model, data, ["1"], features="channels", progress=False)
    assert sites["1"].dim == 4 and sites["1"].rows == 10 * 36
    assert sites["1"].classes.counts.sum() == 360  # labels repeat per site
    pooled = collect(model, data, ["1"], features="pool", progress=False)
    x = torch.cat([d[0] for d in data])
    assert torch.allclose(pooled["1"].moments.mean, model(x).mean(dim=(0, 2, 3)).double(), atol=1e-6)
    tokens = nn.Sequential(nn.Linear(3, 5))
    res = collect(tokens, [torch.randn(4, 7, 3)], ["0"], features="channels", channel_dim=-1, progress=False)
    assert res["0"].dim == 5 and res["0"].rows == 28
    with pytest.raises(ValueError, match="channel_dim"):
        collect(tokens, [torch.randn(4, 7, 3)], ["0"], features="pool", channel_dim=0, progress=False)


def test_nc_from_collect_with_a_second_pass_for_nc4():
    model = mlp()
    data = labelled_batches(6, 50)
    first = collect(model, data, ["1"], progress=False)
    head = nn.Linear(16, 3)
    means = first["1"].classes.means
    second = collect(model, data, ["1"], probes=[lambda name: NearestCentreAgreement(means, head)], progress=False)
    streamed = neural_collapse_from_stats(first["1"].classes, head, nc4=second["1"].extra["nc4"])
    x = torch.cat([d[0] for d in data])
    y = torch.cat([d[1] for d in data])
    model.eval()
    direct = neural_collapse(model[1](model[0](x)).detach(), y, classifier=head)
    assert streamed.nc1 == pytest.approx(direct.nc1, rel=1e-5)
    assert streamed.nc4 == pytest.approx(direct.nc4)


def test_samples_feed_srm():
    res = collect(mlp(), labelled_batches(), ["1"], reservoir_size=100, progress=False)
    r = srm(res["1"].samples.values)
    assert r.n_samples == 100 and r.n_features == 16


def test_nan_activations():
    model = nn.Sequential(nn.Linear(3, 3))
    x = torch.randn(10, 3)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        collect(model, [x], ["0"], progress=False)
    res = collect(model, [x], ["0"], nan_policy="omit", progress=False)
    assert res["0"].excluded_nonfinite == 1 and res["0"].moments.count == 9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(layers=["fc9"]), "not a module"),
        (dict(layers=[]), "layers"),
        (dict(layers=["1", "1"]), "repeat"),
        (dict(features="mean"), "features"),
        (dict(max_samples=0), "max_samples"),
        (dict(reservoir_size=0), "reservoir_size"),
        (dict(nan_policy="skip"), "nan_policy"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(layers=["1"])
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        collect(mlp(), labelled_batches(1), progress=False, **args)


def test_bad_data():
    with pytest.raises(ValueError, match="no batches"):
        collect(mlp(), [], ["1"], progress=False)
    with pytest.raises(TypeError, match="data must yield"):
        collect(mlp(), ["text"], ["1"], progress=False)
    with pytest.raises(ValueError, match="every batch"):
        collect(mlp(), [(torch.randn(4, 6), torch.arange(4)), torch.randn(4, 6)], ["1"], progress=False)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        collect(lambda x: x, [torch.randn(2, 6)], ["1"], progress=False)


def test_class_statistics_with_fixed_num_classes():
    res = collect(mlp(), labelled_batches(), ["3"], num_classes=5, progress=False)
    assert isinstance(res["3"].classes, ClassMoments) and res["3"].classes.counts.shape == (5,)


def test_dataloader_and_dict_batches():
    ds = torch.utils.data.TensorDataset(torch.randn(50, 6), torch.randint(0, 3, (50,)))
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    res = collect(mlp(), loader, ["1"], progress=False)
    assert res.n_inputs == 50 and res.has_labels

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, inputs):
            return self.fc(inputs)

    res = collect(Keyword(), [{"inputs": torch.randn(8, 6), "labels": torch.arange(8) % 2}], ["fc"], progress=False)
    assert res["fc"].classes.counts.tolist() == [4, 4]


def test_empty_batches_are_harmless():
    data = [(torch.randn(0, 6), torch.zeros(0, dtype=torch.long)), *labelled_batches(2)]
    res = collect(mlp(), data, ["1"], progress=False)
    assert res["1"].moments.count == 80 and res.n_batches == 3
