"""Small models and data for fast tests: a tiny conv net with BatchNorm, a tiny MLP,
a forward-counting wrapper, random images and a model trained on MNIST in seconds;
and headless chromium for the browser tests."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class TinyConvNet(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU -> maxpool -> conv 3x3 -> ReLU -> pool 4x4 -> linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TinyMLP(nn.Module):
    """flatten -> linear -> ReLU -> linear."""

    def __init__(self, in_features: int = 144, num_classes: int = 10, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class Counting(nn.Module):
    """Wraps a model and counts forward calls and the batch rows they processed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls = 0
        self.rows = 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x)


def random_images(n: int = 32, shape=(1, 12, 12), num_classes: int = 10, seed: int = 0,
                  low: float = 0.0, high: float = 1.0):
    """Uniform random images in [low, high] and random labels."""
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand((n, *shape), generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, y


def train_quick(model: nn.Module, x, y, *, epochs: int = 3, batch_size: int = 100,
                lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Standard training with Adam for a few epochs; returns the model in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def mnist(n_train: int = 2000, n_test: int = 500):
    """The first n examples of MNIST train and test via fatlib.data, as floats in [0, 1]."""
    from fatlib import data

    xtr, ytr = data.load("mnist", "train", n=n_train)
    xte, yte = data.load("mnist", "test", n=n_test)
    return data.to_float(xtr), ytr, data.to_float(xte), yte


def trained_mnist_model(n_train: int = 2000, n_test: int = 500, epochs: int = 4):
    """A TinyConvNet trained on the first n_train MNIST images (a few seconds on 1 core).

    Returns (model in eval mode, x_test, y_test).
    """
    xtr, ytr, xte, yte = mnist(n_train, n_test)
    model = train_quick(TinyConvNet(), xtr, ytr, epochs=epochs)
    return model, xte, yte


def model_state(model: nn.Module):
    """(train flags of every module, copies of every buffer): what an attack must not change."""
    return [m.training for m in model.modules()], [b.clone() for b in model.buffers()]


def assert_same_state(a, b):
    """Two model_state results are equal: same modes, identical buffers."""
    assert a[0] == b[0]
    assert all(torch.equal(u, v) for u, v in zip(a[1], b[1]))


# --------------------------------------------------------------------------- browser

CHROMIUM = os.environ.get("FATLIB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def _browser_missing() -> str | None:
    """Why headless chromium cannot be driven here (None when it can)."""
    if not Path(CHROMIUM).exists():
        return f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (scripts/bootstrap.sh installs it)"
    return None


@contextlib.contextmanager
def headless_chromium():
    """Debian's chromium (``$FATLIB_CHROMIUM``) launched by playwright; yields the browser.

    Skips the test when chromium or playwright is missing; fails instead when ``CI=true``.
    """
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()
