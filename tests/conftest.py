"""Test-wide settings: quiet TensorFlow, Keras on TensorFlow, a headless matplotlib."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every figure a test opened, so memory stays flat."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def one_torch_thread():
    """Run a test on one PyTorch thread, restoring the count afterwards.

    The PyTorch tests use small tensors: on a 2-core machine shared with other work,
    one thread is several times faster than two threads fighting for the cores.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
