"""Datasets for studies: embedded (digits, MNIST-1D, teacher–student) and standard files on disk (MNIST & co.).

Every loader returns a :class:`Split` of float32 inputs and int64 labels (float32 targets for regression), on CPU.

- :func:`load_digits`: scikit-learn's bundled 8×8 digits, standardised with the training set's statistics.
- :func:`make_mnist1d`: MNIST-1D (Greydanus 2020) generated here, no download: each of 10 one-dimensional
  templates (length 12) is padded with 36–60 zeros, resampled to 72 points, scaled by 1 + 0.4·(u − ½), circularly
  shifted by up to 48, its zero padding replaced by Gaussian-smoothed noise (σ = 2, scale 0.25), iid noise
  (0.02) added, sheared by 0.75·(u − ½)·linspace(−½, ½), and resampled to 40 points; the set is standardised.
  It follows the paper's procedure with a local ``numpy.random.Generator`` seeded by one draw from ``generator``
  (so it never touches numpy's global RNG); the numbers differ from the ``mnist1d`` package's pickled set, which is
  seeded through numpy's global RNG.
- :func:`teacher_student`: Gaussian inputs and a rank-r linear teacher y = U diag(s) Vᵀ x with s = 4, 2, 1, …, or a
  small tanh teacher y = A tanh(Bx) (REFERENCE 6.4).
- :func:`load_vision`: MNIST, FashionMNIST and CIFAR-10 from their standard files (idx-ubyte, optionally gzipped;
  CIFAR-10's python pickle batches) under a root folder, parsed with numpy; never downloads.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from isotorch._util import check_choice, check_generator, draw_seed

__all__ = [
    "DatasetNotFoundError",
    "Split",
    "check_dataset",
    "load_dataset",
    "load_digits",
    "load_vision",
    "make_mnist1d",
    "study_split",
    "teacher_student",
]


class DatasetNotFoundError(FileNotFoundError):
    """The standard files of a dataset are not under the given root (the message says where to put them)."""


@dataclass(frozen=True)
class Split:
    """Train and test tensors of a dataset.

    Attributes:
        x_train, y_train, x_test, y_test: inputs (float32) and labels (int64) or targets (float32).
        name: the dataset's name.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = ""

    def __iter__(self):
        return iter((self.x_train, self.y_train, self.x_test, self.y_test))

    def to_dict(self) -> dict:
        """Sizes and shapes (JSON-ready)."""
        return {
            "name": self.name,
            "train": len(self.x_train),
            "test": len(self.x_test),
            "input_shape": list(self.x_train.shape[1:]),
        }


def load_digits(*, test_fraction: float = 0.2, generator: torch.Generator | None = None) -> Split:
    """scikit-learn's bundled 8×8 digits (1,797 samples of 64 features, 10 classes; no download).

    The split is a random permutation drawn from ``generator`` (``None``: torch's global RNG; pass a seeded
    generator for a fixed split); features are standardised with the training set's mean and std (scikit-learn's
    ``StandardScaler``: a feature constant on the training split is centred, not scaled).

    Examples:
        >>> s = load_digits()
        >>> s.x_train.shape, s.x_test.shape
        (torch.Size([1438, 64]), torch.Size([359, 64]))
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.preprocessing import StandardScaler

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    generator = check_generator(generator)
    x, y = _load(return_X_y=True)
    order = torch.randperm(len(x), generator=generator).numpy()
    n_test = round(test_fraction * len(x))
    test, train = order[:n_test], order[n_test:]
    # scikit-learn's scaler: a pixel constant on the training split (blank in every training digit) is centred but
    # not scaled, so the test digits that do use it stay at pixel scale instead of being divided by ~0
    x = StandardScaler().fit(x[train]).transform(x)

    def tensors(idx) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(x[idx], dtype=torch.float32), torch.tensor(y[idx], dtype=torch.int64)

    return Split(*tensors(train), *tensors(test), name="digits")


# --------------------------------------------------------------------------------------------------- MNIST-1D
_TEMPLATES = np.array(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ]
)


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def make_mnist1d(
    num_samples: int = 5000,
    *,
    generator: torch.Generator | None = None,
    test_fraction: float = 0.2,
    length: int = 40,
    padding: tuple[int, int] = (36, 60),
    scale_coeff: float = 0.4,
    max_translation: int = 48,
    corr_noise_scale: float = 0.25,
    iid_noise_scale: float = 0.02,
    shear_scale: float = 0.75,
) -> Split:
    """MNIST-1D, generated locally (10 classes, ``length`` = 40 features); see the module docstring.

    Args:
        num_samples: total samples, split evenly over the classes (default 5000).
        generator: draws the set (``None``: torch's global RNG; pass a seeded generator for a fixed set).
        test_fraction: fraction held out for the test set (default 0.2).
        length: output length (default 40). Other arguments: the paper's transformation scales.

    Examples:
        >>> s = make_mnist1d(200, generator=torch.Generator().manual_seed(0))
        >>> s.x_train.shape, s.y_train.unique().numel()
        (torch.Size([160, 40]), 10)
    """
    from scipy.ndimage import gaussian_filter1d

    if num_samples < 10:
        raise ValueError(f"num_samples must be at least 10 (one per class), got {num_samples}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(draw_seed(generator))
    templates = _TEMPLATES - _TEMPLATES.mean(1, keepdims=True)
    templates /= templates.std(1, keepdims=True)
    templates = (templates - templates[:, :1]) / 6.0  # every signal starts and ends at 0
    dilated = templates.shape[1] + padding[1]
    xs, ys = [], []
    for label, template in enumerate(templates):
        for _ in range(num_samples // 10):
            pad = padding[0] + int(rng.random() * (padding[1] - padding[0] + 1))
            x = _resample(np.concatenate([template + 1e-8, np.zeros(pad)]), dilated)
            x = x * (1 + scale_coeff * (rng.random() - 0.5))
            x = np.roll(x, int(rng.integers(max_translation)))
            mask = x != 0
            noise = gaussian_filter1d(corr_noise_scale * rng.standard_normal(dilated), 2)
            x = np.where(mask, x, noise) + iid_noise_scale * rng.standard_normal(dilated)
            x = x - shear_scale * (rng.random() - 0.5) * np.linspace(-0.5, 0.5, dilated)
            xs.append(_resample(x, length))
            ys.append(label)
    order = rng.permutation(len(ys))
    x = np.stack(xs)[order]
    y = np.array(ys)[order]
    x = (x - x.mean()) / x.std()
    n_train = len(y) - round(test_fraction * len(y))
    tx = torch.tensor(x, dtype=torch.float32)
    ty = torch.tensor(y, dtype=torch.int64)
    return Split(tx[:n_train], ty[:n_train], tx[n_train:], ty[n_train:], name="mnist1d")


# --------------------------------------------------------------------------------------------------- teacher–student
def teacher_student(
    n_train: int = 500,
    n_test: int = 1000,
    *,
    dim: int = 20,
    out_dim: int | None = None,
    teacher: str = "linear",
    rank: int = 3,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> Split:
    """Synthetic regression: x ~ N(0, I_dim), y = f(x) + noise·ε, from a linear low-rank or small tanh teacher.

    - ``"linear"``: f(x) = U diag(s) Vᵀ x with random orthonormal U (out_dim × r), V (dim × r) and well-separated
      singular values s_k = 4·2^{−k} (k = 0 … r−1: 4, 2, 1, …), so that each mode is learned in its own jump.
    - ``"tanh"``: f(x) = A tanh(B x) with r hidden units, rows of B of norm 2 (distinct directions), and A of
      shape (out_dim, r) with columns of norm 4·2^{−k}.

    Args:
        n_train: training sample count (default 500).
        n_test: test sample count (default 1000).
        dim: input dimension (default 20). out_dim: output dimension (default ``dim``).
        teacher: ``"linear"`` or ``"tanh"`` (default ``"linear"``).
        rank: rank r of the linear teacher / hidden units of the tanh teacher (default 3).
        noise: label-noise standard deviation (default 0).
        generator: ``torch.Generator``, or ``None`` (torch's global RNG).

    Examples:
        >>> s = teacher_student(50, 20, dim=8, rank=2, generator=torch.Generator().manual_seed(0))
        >>> s.x_train.shape, s.y_train.shape, torch.linalg.matrix_rank(s.y_train).item()
        (torch.Size([50, 8]), torch.Size([50, 8]), 2)
    """
    out_dim = dim if out_dim is None else out_dim
    if teacher not in ("linear", "tanh"):
        raise ValueError(f"teacher must be 'linear' or 'tanh', got {teacher!r}")
    if not 1 <= rank <= min(dim, out_dim):
        raise ValueError(f"rank must be in [1, min(dim, out_dim)] = [1, {min(dim, out_dim)}], got {rank}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    g = check_generator(generator)
    strengths = 4.0 * 2.0 ** -torch.arange(rank, dtype=torch.float32)
    u = torch.linalg.qr(torch.randn(out_dim, rank, generator=g))[0]
    v = torch.linalg.qr(torch.randn(dim, rank, generator=g))[0]
    if teacher == "linear":
        a = u @ torch.diag(strengths) @ v.T

        def f(x):
            return x @ a.T
    else:
        b = 2.0 * v.T  # (r, dim), orthogonal rows of norm 2
        a = u * strengths  # (out_dim, r)

        def f(x):
            return torch.tanh(x @ b.T) @ a.T

    x = torch.randn(n_train + n_test, dim, generator=g)
    y = f(x) + noise * torch.randn(n_train + n_test, out_dim, generator=g)
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:], name=f"teacher-{teacher}-rank{rank}")


# --------------------------------------------------------------------------------------------------- vision files
_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_VISION = {
    "mnist": ("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/", "torchvision.datasets.MNIST"),
    "fashion_mnist": (
        "FashionMNIST",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "torchvision.datasets.FashionMNIST",
    ),
    "cifar10": (
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "torchvision.datasets.CIFAR10",
    ),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx-ubyte file (the MNIST format; ``.gz`` allowed): big-endian magic 0x0000TTDD, D sizes, data."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path) as handle:
            raw = handle.read()
    else:
        raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in types:
        raise ValueError(f"{path}: unknown idx data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, types[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def _find(root: Path, folder: str, name: str) -> Path | None:
    for base in (root / folder / "raw", root / folder, root):
        for candidate in (base / name, base / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def _missing(name: str, root: Path, files: list[str]) -> DatasetNotFoundError:
    folder, url, tv = _VISION[name]
    where = root / folder if name == "cifar10" else root / folder / "raw"
    return DatasetNotFoundError(
        f"{name}: {', '.join(files)} not found under {root} (looked in {root / folder}/raw, {root / folder} and "
        f"{root}). Put the standard files in {where} (get them from {url}, or once with torchvision: "
        f"{tv}({str(root)!r}, download=True)). isotorch never downloads."
    )


def load_vision(name: str, root: str | Path, *, flatten: bool = False, test_only: bool = False) -> Split:
    """MNIST, FashionMNIST or CIFAR-10 from their standard files under ``root``, scaled to [0, 1].

    Files are looked up in ``root/<Folder>/raw``, ``root/<Folder>`` and ``root`` (``Folder`` = ``MNIST``,
    ``FashionMNIST`` or ``cifar-10-batches-py``, torchvision's layout); idx files may be gzipped.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        root: the data root.
        flatten: return (N, features) instead of (N, C, H, W). Default: False.
        test_only: read only the test files (the train tensors are then empty). Default: False.

    Raises:
        DatasetNotFoundError: files missing (the message says where to put them and where to get them).
    """
    check_choice(name, "name", tuple(_VISION))
    root = Path(root)
    folder = _VISION[name][0]
    splits = ("test",) if test_only else ("train", "test")
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if name == "cifar10":
        names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        for split in splits:
            found = [_find(root, folder, f) for f in names[split]]
            missing = [f for f, p in zip(names[split], found, strict=True) if p is None]
            if missing:
                raise _missing(name, root, missing)
            paths = [p for p in found if p is not None]  # all of them
            xs, ys = [], []
            for p in paths:
                with open(p, "rb") as handle:
                    batch = pickle.load(handle, encoding="bytes")
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
            arrays[split] = (np.concatenate(xs), np.concatenate(ys))
    else:
        for split in splits:
            found = [_find(root, folder, f) for f in _IDX[split]]
            missing = [f for f, p in zip(_IDX[split], found, strict=True) if p is None]
            if missing:
                raise _missing(name, root, missing)
            image_path, label_path = (p for p in found if p is not None)  # both of them
            images, labels = read_idx(image_path), read_idx(label_path)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(f"{found[0]} and {found[1]} do not hold matching images (N, H, W) and labels (N,)")
            arrays[split] = (images[:, None], labels.astype(np.int64))

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in arrays:
            shape = (0, 3, 32, 32) if name == "cifar10" else (0, 1, 28, 28)
            return torch.zeros(shape), torch.zeros(0, dtype=torch.int64)
        x = torch.tensor(arrays[split][0], dtype=torch.float32) / 255.0
        return (x.flatten(1) if flatten else x), torch.tensor(arrays[split][1])

    return Split(*tensors("train"), *tensors("test"), name=name)


def _check_idx(path: Path, ndim: int) -> int:
    """The item count of an idx file from its header; ValueError when it is not an idx file of ``ndim`` dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(4 + 4 * ndim)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path} cannot be read ({exc})") from None
    if len(head) < 4 + 4 * ndim or head[0] != 0 or head[1] != 0 or head[3] != ndim:
        raise ValueError(f"{path} is not an idx file of {ndim} dimensions (bad header); is it the right file?")
    return int.from_bytes(head[4:8], "big")


def check_dataset(name: str, root: str | Path | None = None) -> None:
    """Check, without loading it, that :func:`load_dataset` can find ``name``'s files (headers read, not data).

    Embedded datasets always pass; ``"mnist"``, ``"fashion_mnist"`` and ``"cifar10"`` need ``root`` to be an
    existing folder holding their standard files (idx headers with matching image and label counts; CIFAR-10's
    pickles). Other names pass too (a study may load datasets of its own).

    Raises:
        ValueError: no root, or a file that is not what it should be (names it).
        DatasetNotFoundError: the root or a file does not exist (says where to put the files).

    Examples:
        >>> check_dataset("digits")
        >>> check_dataset("mnist", "/nonexistent")
        Traceback (most recent call last):
        ...
        isotorch.studies._data.DatasetNotFoundError: dataset 'mnist': data_root /nonexistent does not exist
    """
    if name not in _VISION:
        return
    if not root:
        raise ValueError(f"dataset {name!r} needs data_root (the folder holding its standard files); none was given")
    root = Path(root)
    if not root.exists():
        raise DatasetNotFoundError(f"dataset {name!r}: data_root {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"dataset {name!r}: data_root {root} is not a folder")
    folder = _VISION[name][0]
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        found = [_find(root, folder, f) for f in files]
        missing = [f for f, p in zip(files, found, strict=True) if p is None]
        if missing:
            raise _missing(name, root, missing)
        for path in (p for p in found if p is not None):  # all of them
            with open(path, "rb") as handle:
                if handle.read(1) != b"\x80":
                    raise ValueError(f"{path} is not a CIFAR-10 python pickle batch; is it the right file?")
        return
    for split in ("train", "test"):
        found = [_find(root, folder, f) for f in _IDX[split]]
        missing = [f for f, p in zip(_IDX[split], found, strict=True) if p is None]
        if missing:
            raise _missing(name, root, missing)
        image_path, label_path = (p for p in found if p is not None)  # both of them
        images, labels = _check_idx(image_path, 3), _check_idx(label_path, 1)
        if images != labels:
            raise ValueError(f"{found[0]} holds {images} images but {found[1]} holds {labels} labels")


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    generator: torch.Generator | None = None,
    flatten: bool = False,
    **kwargs,
) -> Split:
    """One entry point: ``"digits"``, ``"mnist1d"`` (embedded), ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``
    (files under ``root``; an empty string counts as none). ``generator`` draws an embedded dataset's split (and
    MNIST-1D's samples; ``None``: torch's global RNG); standard files come with their own split and draw nothing.
    ``flatten`` gives (N, features) inputs for every dataset (the embedded ones already are). Extra keyword
    arguments go to the loader.
    """
    if name == "digits":
        return load_digits(generator=generator, **kwargs)
    if name == "mnist1d":
        return make_mnist1d(generator=generator, **kwargs)
    if name in _VISION:
        if not root:
            raise ValueError(f"dataset {name!r} needs root= (the folder holding its standard files)")
        return load_vision(name, root, flatten=flatten, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose from digits, mnist1d, {', '.join(_VISION)}")


def study_split(config, *, flatten: bool = True) -> Split:
    """The split every seed of a study trains on: ``config.dataset`` (files under ``config.data_root``) from
    :func:`load_dataset`, its split drawn from ``torch.Generator().manual_seed(0)`` (one split for the whole run)."""
    return load_dataset(
        config.dataset, root=config.data_root, flatten=flatten, generator=torch.Generator().manual_seed(0)
    )
