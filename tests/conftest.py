import random

import numpy as np
import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)  # tests are many small ops: one thread is fastest and fair to CI
settings.register_profile("isotorch", deadline=None, max_examples=40, derandomize=True)
settings.load_profile("isotorch")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed every RNG before each test, so that each test is reproducible on its own."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds the legacy global RNG that user code may use
    torch.manual_seed(0)
    yield


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request):
    """Run symmetry tests in float32 and float64 (tolerances come from isotorch.testing.tolerance)."""
    return request.param


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
