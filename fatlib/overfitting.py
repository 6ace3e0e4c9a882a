"""Catastrophic overfitting, defined once: the collapse point of a run, the best record before
it, and a dead network.

Every page of the book that says a run "collapsed" uses :func:`diagnose` (or the three
functions it is made of); none defines its own thresholds.

**The definition.** A history record (``fatlib.train``: FGSM and PGD accuracy in percent on
the first test images, eval mode) shows catastrophic overfitting when the run has lost
robustness it had, that is, an earlier record reached at least twice
:data:`COLLAPSE_THRESHOLD` (20%) PGD accuracy and this record's PGD accuracy is at most half
the best of the earlier ones, and

- FGSM accuracy exceeds that PGD accuracy by at least :data:`COLLAPSE_GAP` (20) points: the
  one-step attack no longer solves the inner maximisation (andriushchenko2020 §4, Fig. 4;
  wong2020 Fig. 1: FGSM accuracy jumps while PGD accuracy falls), or
- PGD accuracy is below :data:`COLLAPSE_THRESHOLD` (10%, the accuracy of a classifier that
  ignores its input). This clause
  catches collapses of small models whose accuracies are too low for a 20-point gap (a
  single-layer CNN that peaks at 21% PGD accuracy and ends at 1%).

The loss of robustness is required because early in training, at a large radius, FGSM
accuracy can exceed PGD accuracy by 20 points while the model is still near chance (MNIST at
eps 0.3): that is a weak attack on a model still learning, not a collapse.

The **collapse point** is the first such record. The run's **best record before the collapse**
is its record of highest PGD accuracy before that point (over the whole history when it
never collapsed): what early stopping could have kept. A network is **dead** when it ended
constant: clean accuracy within half a point of chance and a gradient alignment that is not a
number (the input gradients are exactly zero, so their cosine is undefined).

The final verdict on a collapse uses the same threshold with its statistics:
``fatlib.verdicts.collapses`` / ``survives`` on the final PGD-50-10 accuracies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

COLLAPSE_GAP = 20.0        # points of FGSM minus PGD accuracy that mark a collapse
COLLAPSE_THRESHOLD = 10.0  # % robust accuracy: a classifier that ignores its input scores 10%
                           # on a balanced 10-class test set (see fatlib.verdicts)
DEAD_MARGIN = 0.5          # points above chance of a constant network's clean accuracy


def _accuracies(record: dict) -> tuple[float | None, float | None]:
    return record.get("fgsm_acc"), record.get("pgd_acc")


def collapse_point(history: list, *, gap: float = COLLAPSE_GAP,
                   threshold: float = COLLAPSE_THRESHOLD) -> dict | None:
    """The first history record that shows catastrophic overfitting (module docstring).

    Implements: the signature of catastrophic overfitting of andriushchenko2020 §4 / Fig. 4
    (FGSM accuracy far above PGD accuracy) once the run has lost half its best robustness.
    Args:
        history: a run's metric history (records with 'fgsm_acc', 'pgd_acc' in %; records
            without them are skipped).
        gap: FGSM minus PGD accuracy, in points, that counts as a collapse.
        threshold: the robustness a run must have had (twice it) to lose it, and the PGD
            accuracy under which a run that lost half of it has collapsed.
    Returns:
        that record (a dict), or None if the run never collapsed.
    """
    best = -math.inf
    for record in history:
        fgsm_acc, pgd_acc = _accuracies(record)
        if pgd_acc is None:
            continue
        lost = best >= 2 * threshold and pgd_acc <= best / 2
        if lost and (pgd_acc < threshold or (fgsm_acc is not None and fgsm_acc - pgd_acc >= gap)):
            return record
        best = max(best, pgd_acc)
    return None


def best_before_collapse(history: list, key: str = "pgd_acc", **collapse_kw) -> dict | None:
    """The record of highest `key` before the collapse point (whole history if none).

    Args:
        history: as in :func:`collapse_point`.
        key: the metric to maximise (PGD accuracy by default).
        collapse_kw: gap / threshold of :func:`collapse_point`.
    Returns:
        that record, or None if no record has `key`.
    """
    point = collapse_point(history, **collapse_kw)
    end = history.index(point) if point is not None else len(history)
    candidates = [r for r in history[:end] if r.get(key) is not None]
    return max(candidates, key=lambda r: r[key]) if candidates else None


def is_dead(metrics: dict, history: list, n_classes: int = 10) -> bool:
    """True if the network ended constant: chance clean accuracy and zero input gradients.

    Args:
        metrics: the run's final metrics ('clean_acc' in %).
        history: its history (the last record's 'grad_alignment' is NaN when every input
            gradient is zero).
        n_classes: classes of the task (chance = 100 / n_classes %).
    Returns:
        bool.
    """
    alignment = history[-1].get("grad_alignment") if history else None
    chance = 100.0 / n_classes
    return (metrics.get("clean_acc", math.inf) <= chance + DEAD_MARGIN
            and isinstance(alignment, float) and math.isnan(alignment))


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` found: ``collapsed``, ``epoch`` (of the collapse point, or None),
    ``best`` (the best record before it, or None), ``dead``, and ``text`` (one line)."""

    collapsed: bool
    epoch: float | None
    best: dict | None
    dead: bool
    text: str


def diagnose(run, n_classes: int = 10) -> Diagnosis:
    """Catastrophic overfitting of one run (a fatlib Run, Record or TrainResult).

    Args:
        run: anything with ``.history`` and ``.metrics``.
        n_classes: see :func:`is_dead`.
    Returns:
        Diagnosis, e.g. text 'collapsed at epoch 24.3 (best PGD 21.4% at epoch 12.1)'.
    """
    point = collapse_point(run.history)
    best = best_before_collapse(run.history)
    dead = is_dead(run.metrics, run.history, n_classes)
    best_text = (f"best PGD {best['pgd_acc']:.1f}% at epoch {best['epoch']:.1f}"
                 if best is not None else "no PGD record")
    if dead:
        text = f"dead network (constant output; {best_text})"
    elif point is not None:
        text = f"collapsed at epoch {point['epoch']:.1f} ({best_text})"
    else:
        text = f"no collapse ({best_text})"
    return Diagnosis(collapsed=point is not None or dead,
                     epoch=None if point is None else point["epoch"], best=best, dead=dead,
                     text=text)
