"""Study datasets: embedded generators and the vision loaders on files written here in the standard formats."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from isotorch.studies._data import (
    DatasetNotFoundError,
    check_dataset,
    load_dataset,
    load_digits,
    load_vision,
    make_mnist1d,
    read_idx,
    teacher_student,
)


def _write_idx(path, array: np.ndarray, *, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _mnist_files(folder, n_train=7, n_test=5, *, gz=False):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n, (img, lab) in (
        ("train", n_train, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
        ("test", n_test, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    ):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        _write_idx(folder / img, images, gz=gz)
        _write_idx(folder / lab, labels, gz=gz)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize(
    ("name", "folder", "gz"), [("mnist", "MNIST/raw", False), ("fashion_mnist", "FashionMNIST", True)]
)
def test_idx_loaders(tmp_path, name, folder, gz):
    arrays = _mnist_files(tmp_path / folder, gz=gz)
    split = load_vision(name, tmp_path)
    assert split.x_train.shape == (7, 1, 28, 28) and split.x_test.shape == (5, 1, 28, 28)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    np.testing.assert_allclose(split.x_test[:, 0].numpy() * 255, arrays["test"][0], atol=1e-3)
    assert split.y_train.tolist() == arrays["train"][1].tolist()
    assert load_vision(name, tmp_path, flatten=True).x_train.shape == (7, 784)


@pytest.mark.parametrize("gz", [False, True])
def test_check_dataset_reads_headers_only(tmp_path, gz):
    _mnist_files(tmp_path / "MNIST" / "raw", gz=gz)
    check_dataset("mnist", tmp_path)  # the files load_vision reads pass
    check_dataset("digits")  # embedded: nothing to check
    with pytest.raises(ValueError, match="needs data_root"):
        check_dataset("mnist", "")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        check_dataset("mnist", tmp_path / "missing")
    with pytest.raises(DatasetNotFoundError, match=r"train-images-idx3-ubyte.*not found"):
        check_dataset("fashion_mnist", tmp_path)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(3), gz=gz)  # 3 labels, 7 images
    with pytest.raises(ValueError, match=r"holds 7 images but .* holds 3 labels"):
        check_dataset("mnist", tmp_path)
    _write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros((7, 2)), gz=gz)  # 2-d labels
    with pytest.raises(ValueError, match=f"train-labels-idx1-ubyte{suffix} is not an idx file of 1 dimensions"):
        check_dataset("mnist", tmp_path)


def test_cifar10_loader(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = rng.integers(0, 256, (3, 3072)).astype(np.uint8), rng.integers(0, 10, 3).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, handle)
        batches[name] = (data, labels)
    split = load_vision("cifar10", tmp_path)
    assert split.x_train.shape == (15, 3, 32, 32) and split.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(split.x_test.reshape(3, -1).numpy() * 255, batches["test_batch"][0], atol=1e-3)
    assert split.y_train[:3].tolist() == batches["data_batch_1"][1]


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train-images-idx3-ubyte.*MNIST.*download=True.*never downloads"):
        load_vision("mnist", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_vision("cifar10", tmp_path)
    with pytest.raises(ValueError, match="must be one of"):
        load_vision("imagenet", tmp_path)
    with pytest.raises(ValueError, match="needs root"):
        load_dataset("mnist")


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "ok", np.zeros((4, 2, 2)))
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_mnist1d_is_seeded_and_shaped():
    def gen(seed):
        return torch.Generator().manual_seed(seed)

    a, b, c = (make_mnist1d(400, generator=gen(s)) for s in (3, 3, 4))
    assert a.x_train.shape == (320, 40) and a.x_test.shape == (80, 40)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert torch.bincount(torch.cat([a.y_train, a.y_test])).tolist() == [40] * 10
    x = torch.cat([a.x_train, a.x_test])
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-2
    state = np.random.get_state()[1].copy()  # noqa: NPY002 - the global RNG must be untouched
    make_mnist1d(20)
    assert np.array_equal(state, np.random.get_state()[1])  # noqa: NPY002


def test_digits_standardised_on_the_training_split():
    """Train features have mean 0 and std 1 (or are constant); a pixel blank in every training digit but used by a
    test digit (pixel 56 with generator seed 0) stays at pixel scale instead of being divided by ~0."""
    split = load_digits(generator=torch.Generator().manual_seed(0))
    std = split.x_train.double().std(0, unbiased=False)
    used = std > 0
    assert torch.allclose(split.x_train.double().mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(std[used], torch.ones(int(used.sum()), dtype=torch.float64), atol=1e-5)
    assert not used[56] and split.x_test[:, 56].abs().max() > 0  # the case that matters is present
    assert split.x_test.abs().max() < 100  # dividing by (0 + 1e-6) would give ~1e7


def test_embedded_splits_follow_the_generator():
    """generator=None draws from torch's global RNG (two calls differ); equal seeded generators give equal splits."""
    split = load_dataset("digits", generator=torch.Generator().manual_seed(5))
    again = load_dataset("digits", generator=torch.Generator().manual_seed(5))
    assert torch.equal(split.x_test, again.x_test) and torch.equal(split.y_train, again.y_train)
    other = load_dataset("digits", generator=torch.Generator().manual_seed(6))
    assert not torch.equal(split.x_test, other.x_test)
    torch.manual_seed(0)
    first = load_digits()
    assert not torch.equal(first.x_test, load_digits().x_test)  # the global RNG advanced
    torch.manual_seed(0)
    assert torch.equal(first.x_test, load_digits().x_test)  # and is what drew it
    with pytest.raises(TypeError, match="generator"):
        load_dataset("mnist1d", generator=3)


def test_mnist1d_classes_are_learnable():
    """A linear classifier beats chance clearly (templates carry the label), a check that can fail."""
    from sklearn.linear_model import LogisticRegression

    s = make_mnist1d(2000, generator=torch.Generator().manual_seed(0))
    acc = LogisticRegression(max_iter=300).fit(s.x_train.numpy(), s.y_train.numpy()).score(s.x_test.numpy(), s.y_test)
    assert acc > 0.25


@pytest.mark.parametrize("teacher", ["linear", "tanh"])
def test_teacher_student(teacher):
    g = torch.Generator().manual_seed(0)
    s = teacher_student(100, 30, dim=10, rank=3, teacher=teacher, generator=g)
    assert s.x_train.shape == (100, 10) and s.y_test.shape == (30, 10)
    sv = torch.linalg.svdvals(s.y_train)
    assert (sv[3:] < 1e-4 * sv[0]).all() and sv[2] > 1e-2 * sv[0]  # rank exactly 3
    if teacher == "linear":
        a = torch.linalg.lstsq(s.x_train, s.y_train).solution
        np.testing.assert_allclose(torch.linalg.svdvals(a)[:3].numpy(), [4, 2, 1], rtol=1e-4)
    with pytest.raises(ValueError, match="rank must be"):
        teacher_student(dim=4, rank=5)
    with pytest.raises(ValueError, match="teacher must be"):
        teacher_student(teacher="relu")


def test_digits_and_dispatch():
    s = load_digits()
    assert s.x_train.shape[1] == 64 and s.name == "digits"
    assert load_dataset("mnist1d", num_samples=100).x_train.shape == (80, 40)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("svhn")
