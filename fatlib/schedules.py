"""Learning-rate, eps and alpha schedules: pure functions of (iteration, total iterations, ...).

Iterations count optimizer steps from 0. ``total`` is the number of steps of
the whole run and ``epochs`` its number of epochs (so one epoch is
``total / epochs`` steps). Every function returns a float and has no state,
so a resumed run recomputes exactly the same values.
"""

from __future__ import annotations

import bisect

import numpy as np

LR_SCHEDULES = ("cyclic", "piecewise", "onedrop", "flat")


def _check(it: int, total: int) -> None:
    if total < 1 or not 0 <= it < total:
        raise ValueError(f"need 0 <= iteration < total with total >= 1; got iteration {it}, total {total}")


def cyclic(it: int, total: int, lr_max: float, *, peak: float = 0.4) -> float:
    """Triangular cyclic learning rate: 0 -> lr_max over the first `peak` of training -> 0.

    Implements: wong2020 §5.2 (peak = 2/5); the authors set the rate before step i
    at training progress (i + 1) / total, so the last step has rate 0.
    Args:
        it: step index, 0 <= it < total.
        total: number of steps of the run.
        lr_max: maximum learning rate.
        peak: fraction of training at which lr_max is reached (golgooni2021: 0.5).
    Returns:
        the learning rate for step `it`.
    """
    _check(it, total)
    if not 0 < peak < 1:
        raise ValueError(f"cyclic peak must be in (0, 1); got {peak}")
    return float(np.interp((it + 1) / total, [0.0, peak, 1.0], [0.0, lr_max, 0.0]))


def piecewise(it: int, total: int, lr_max: float, *, epochs: float, drops=(), factor: float = 0.1) -> float:
    """Piecewise-constant learning rate, multiplied by `factor` at each epoch in `drops`.

    Implements: wong2020 App. A (PGD and free baselines), Madry et al.'s schedule.
    Args:
        it, total: step index and number of steps.
        lr_max: the initial learning rate.
        epochs: number of epochs of the run (to convert steps to epochs).
        drops: epochs (may be fractional) at which the rate is multiplied by factor.
    Returns:
        lr_max * factor ** (number of drops at or before the current epoch).
    """
    _check(it, total)
    epoch = it * epochs / total
    return float(lr_max * factor ** bisect.bisect_right(sorted(drops), epoch + 1e-9))


def onedrop(it: int, total: int, lr_max: float, *, epochs: float, drop_epoch: float | None = None,
            factor: float = 0.1) -> float:
    """One-drop schedule: lr_max, then lr_max * factor from `drop_epoch` (default epochs - 2).

    Implements: golgooni2021 §4 (e.g. 52 epochs at 0.1, dropped to 0.01 at epoch 50).
    """
    drop = epochs - 2 if drop_epoch is None else drop_epoch
    return piecewise(it, total, lr_max, epochs=epochs, drops=(drop,), factor=factor)


def flat(it: int, total: int, lr_max: float) -> float:
    """Constant learning rate lr_max (wong2020 MNIST PGD training, lr 1e-4)."""
    _check(it, total)
    return float(lr_max)


def learning_rate(name: str, it: int, total: int, lr_max: float, *, epochs: float, **kw) -> float:
    """Dispatch to the schedule `name` in LR_SCHEDULES ('cyclic', 'piecewise', 'onedrop', 'flat').

    Args:
        kw: schedule options (peak for cyclic, drops/factor for piecewise, drop_epoch for onedrop).
    """
    if name == "cyclic":
        return cyclic(it, total, lr_max, **kw)
    if name == "piecewise":
        return piecewise(it, total, lr_max, epochs=epochs, **kw)
    if name == "onedrop":
        return onedrop(it, total, lr_max, epochs=epochs, **kw)
    if name == "flat":
        return flat(it, total, lr_max)
    raise ValueError(f"unknown lr schedule {name!r}; known: {', '.join(LR_SCHEDULES)}")


def linear_warmup(it: int, warmup_iters: int, value: float) -> float:
    """Linear warm-up of eps or alpha: value * min(1, (it + 1) / warmup_iters).

    Implements: andriushchenko2020 (SVHN eps and alpha warm-up over the first epochs).
    Args:
        it: step index (0-based).
        warmup_iters: steps of the warm-up; 0 means no warm-up.
        value: the final value (eps or alpha, pixel units).
    """
    if warmup_iters < 0 or it < 0:
        raise ValueError(f"need it >= 0 and warmup_iters >= 0; got {it}, {warmup_iters}")
    if warmup_iters == 0:
        return float(value)
    return float(value * min(1.0, (it + 1) / warmup_iters))


# wong2020 Figure 1, ImageNet: three phases (epochs 0-6 at 160 px, 6-12 at 352 px, 12-15 full
# size), a cyclic rise to the peak over the first two epochs, then linear decay, with the
# schedule "decayed further by a factor of 10 in the second and third phases".
# RECONSTRUCTED from the paper's text and figure (the authors' YAML configs are not
# available here): knots in epochs and learning rates.
IMAGENET_THREE_PHASE = {
    "epochs": (0.0, 2.0, 6.0, 6.0, 12.0, 12.0, 15.0),
    "lr": (0.0, 0.4, 0.04, 0.04, 0.004, 0.004, 0.0004),
    "phases": ((0, 6, 160), (6, 12, 352), (12, 15, None)),  # (from, to, image size; None: full)
}


def imagenet_three_phase(epoch: float) -> float:
    """Learning rate of the (reconstructed) wong2020 ImageNet schedule at a fractional epoch."""
    knots = IMAGENET_THREE_PHASE
    return float(np.interp(epoch, knots["epochs"], knots["lr"]))
