"""The one verdict rule of the book: a paper's number (and its spread) against ours.

Every chapter ends with a table of verdicts; chapters never type a verdict word, they call
:func:`compare` (a number against the paper's), :func:`check` (a stated qualitative claim,
tested by one of the rules :func:`greater`, :func:`collapses`, :func:`survives`,
:func:`within` (a value without a binomial error against a stated bound), :func:`all_of`)
or :func:`not_run` (what a comparison would need). Each returns a frozen :class:`Verdict`;
``Verdict.row()`` is one row of the chapter's closing table and of the JSON file
(:func:`write_rows`) that the scoreboard page gathers (:func:`read_rows`).
The rule is explained for readers on the book page ``book/opening/verdicts.md``.

Our 95% interval (:func:`interval`). ``k`` measurements ``x_1..x_k`` (one per seed;
accuracies in percent, each on the same ``n`` test images) have mean ``m``, sample sd ``s``
(``k >= 2``) and a binomial standard error, in percentage points,

    s_b = 100 * sqrt(p~ (1 - p~) / n),   p~ = (n m / 100 + 2) / (n + 4),

the Wald error ``sqrt(p (1 - p) / n)`` with Agresti and Coull's two added successes and two
added failures, so that a run that scores 0 of 1,000 still has a half-width (0.28 points,
near the "rule of three" bound 3/n = 0.3) instead of none; away from 0% and 100% it is the Wald error (at
45%: 3.08 points of half-width for n = 1,000, 6.90 for n = 200). The two errors are
combined as in the GUM (JCGM 100:2008, Annex G):

    u = sqrt(s_b^2 + s^2 / k),   half-width h = t_{0.975}(nu) * u,
    nu = u^4 / ((s^2 / k)^2 / (k - 1))      (Welch-Satterthwaite; nu = inf for k = 1 or s = 0).

Why this rule: the test-sample error is common to all seeds (the book evaluates every seed
on the same first n test images), so it is not divided by k; the seed spread of a mean of k
seeds is ``s / sqrt(k)``, but ``s`` from 2 or 3 seeds is itself uncertain, which the
Student-t factor with the Welch-Satterthwaite degrees of freedom accounts for. With one seed
the interval is the binomial one (``1.96 s_b``): it cannot see seed-to-seed variation, so the
book asks for 2-3 seeds. When the binomial error dominates (the usual case at n = 1,000),
``nu`` is large and ``h`` is close to ``1.96 u``; when 2 seeds disagree, ``h`` grows as it
should (to 4.30 u at nu = 2). A plain t-interval over seeds would ignore the shared
test-sample error, and ``1.96 u`` would under-cover with 2-3 seeds.

The verdicts:

- ``REPRODUCED`` (:func:`compare`, paper scale only): the paper's value lies in our
  interval widened by the paper's own spread, ``|m - paper| <= h + 1.96 sd_paper``
  (``sd_paper`` = 0 when the paper gives no spread). The two are added, not combined in
  quadrature: the simple, generous choice, so that a "differs" is never caused by the
  paper's own seed-to-seed variation.
- ``REDUCED`` (:func:`check`): a stated qualitative claim passed its rule at a named scale
  below the paper's. A number measured below the paper's scale is never compared
  quantitatively: :func:`compare` refuses it.
- ``DIFFERS``: outside the widened interval, or the claim failed its rule; it carries the
  gap (ours - paper, and its interval) and the likely reason, which the caller must pass.
- ``NOT_RUN``: not computed here; carries what it would need.

Scales are texts ``"<kind>: <what>"`` with kind one of :data:`SCALES`, e.g.
``"record scale: PreAct ResNet-18 width 16, 50,000 images, 15 epochs"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from statistics import fmean, stdev
from typing import Iterable, Sequence

from fatlib.overfitting import COLLAPSE_THRESHOLD

REPRODUCED = "reproduced"
REDUCED = "reproduced at reduced scale"
DIFFERS = "differs"
NOT_RUN = "not run here"
VERDICTS = (REPRODUCED, REDUCED, DIFFERS, NOT_RUN)

PAPER_SCALE = "paper scale"
RECORD_SCALE = "record scale"
REDUCED_SCALE = "reduced scale"
QUICK = "quick"
SMOKE = "smoke"
SCALES = (PAPER_SCALE, RECORD_SCALE, REDUCED_SCALE, QUICK, SMOKE)

Z95 = 1.959963984540054  # the two-sided 95% point of the standard normal
# Robust accuracy (percent) below which a run has collapsed: the one threshold of
# fatlib.overfitting (a classifier that ignores its input scores 10% on 10 balanced classes).
ROWS_FORMAT = "fatlib.verdicts/1"


# --------------------------------------------------------------------------- intervals

@dataclass(frozen=True)
class Interval:
    """Our measurements of one quantity, summarised: mean and 95% interval (see module doc).

    Fields: ``mean``, ``half_width``, ``lo``/``hi`` (mean -/+ half-width, clipped to [0, 100]
    for an accuracy), ``k`` (seeds), ``n`` (test images per measurement, None for a
    non-accuracy), ``sd_seeds`` (sample sd, None for k = 1), ``se_binomial`` (points, None
    for a non-accuracy), ``std_error`` (u), ``dof`` (nu, inf when exact normal),
    ``coverage_factor`` (t_{0.975}(nu)), ``accuracy``, ``repeats`` (what the k measurements
    are: 'seed', or 'round' for timings, 'repeat' for Monte-Carlo estimates).
    """

    mean: float
    half_width: float
    lo: float
    hi: float
    k: int
    n: int | None
    sd_seeds: float | None
    se_binomial: float | None
    std_error: float
    dof: float
    coverage_factor: float
    accuracy: bool = True
    repeats: str = "seed"

    @property
    def seed_variance(self) -> float:
        """s^2 / k, the seed part of u^2 (0 for one seed)."""
        return 0.0 if self.sd_seeds is None else self.sd_seeds ** 2 / self.k

    def text(self, digits: int = 1, unit: str | None = None) -> str:
        """'45.0 ± 3.3% (3 seeds, n = 1,000)': mean ± 95% half-width, repeats, test images."""
        unit = ("%" if self.accuracy else "") if unit is None else unit
        seeds = f"{self.k} {self.repeats}" + ("s" if self.k != 1 else "")
        size = f", n = {self.n:,}" if self.n is not None else ""
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}{unit} ({seeds}{size})"


def _t975(dof: float) -> float:
    """Two-sided 95% coverage factor: Student's t_{0.975}(dof), 1.96 for dof = inf."""
    if math.isinf(dof):
        return Z95
    from scipy import stats  # lazily: importing scipy.stats costs a second
    return float(stats.t.ppf(0.975, dof))


def _welch_satterthwaite(total_var: float, parts: Sequence[tuple[float, float]]) -> float:
    """Effective degrees of freedom of a sum of variances ``parts`` = [(variance, dof)]."""
    denominator = sum(v * v / d for v, d in parts if v > 0 and not math.isinf(d))
    return math.inf if denominator == 0 else total_var ** 2 / denominator


def _values(measurements, what: str = "measurements") -> list[float]:
    if isinstance(measurements, (int, float)):
        raise ValueError(f"{what}: pass one value per seed as a list, e.g. [44.1, 45.3], "
                         f"not a single number {measurements!r}")
    values = [float(v) for v in measurements]
    if not values:
        raise ValueError(f"{what} are empty: pass one value per seed (e.g. PGD accuracy in %)")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers, got {values}")
    return values


def _check_n(n, accuracy: bool) -> int | None:
    if n is None and not accuracy:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be the number of test images each measurement used "
                         f"(an int >= 1, e.g. 1000), got {n!r}")
    return n


def _check_accuracy(value: float, what: str) -> None:
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"{what} {value!r} is not an accuracy in percent: pass values in "
                         f"[0, 100] (45.2, not 0.452), or accuracy=False for another quantity")


def interval(measurements: Sequence[float], n: int | None, *, accuracy: bool = True,
             repeats: str = "seed") -> Interval:
    """Our mean and 95% interval from per-seed measurements on n test images each.

    Implements the module's rule: u = sqrt(s_b^2 + s^2/k), h = t_{0.975}(nu) u, nu by
    Welch-Satterthwaite (inf for one seed); s_b = 100 sqrt(p~(1 - p~)/n), p~ = (nm/100 + 2)/(n + 4).
    Args:
        measurements: one value per seed; accuracies in percent, in [0, 100].
        n: test images each measurement used (the same images for every seed); may be None
            only when ``accuracy`` is False.
        accuracy: the values are accuracies (add the binomial error); False for another
            quantity (a norm, a time), whose only error is the seed spread (needs k >= 2).
        repeats: what one measurement is, for the texts ('seed', 'round', 'repeat').
    Returns:
        Interval.
    Raises:
        ValueError: empty or non-finite measurements, an accuracy outside [0, 100], n < 1,
            or a non-accuracy with a single measurement (no spread to estimate).
    """
    values = _values(measurements)
    n = _check_n(n, accuracy)
    if accuracy:
        for v in values:
            _check_accuracy(v, "measurement")
    k = len(values)
    if not accuracy and k < 2:
        raise ValueError("a non-accuracy quantity has no binomial error: pass >= 2 seeds so "
                         "that its spread can be estimated")
    mean = fmean(values)
    sd = stdev(values) if k >= 2 else None
    se_b = None
    if accuracy and n is not None:
        p = (n * mean / 100.0 + 2.0) / (n + 4.0)
        se_b = 100.0 * math.sqrt(p * (1.0 - p) / n)
    seed_var = 0.0 if sd is None else sd * sd / k
    total = (se_b or 0.0) ** 2 + seed_var
    dof = _welch_satterthwaite(total, [(seed_var, k - 1)] if k >= 2 else [])
    factor = _t975(dof)
    half = factor * math.sqrt(total)
    lo, hi = mean - half, mean + half
    if accuracy:
        lo, hi = max(lo, 0.0), min(hi, 100.0)
    return Interval(mean=mean, half_width=half, lo=lo, hi=hi, k=k, n=n, sd_seeds=sd,
                    se_binomial=se_b, std_error=math.sqrt(total), dof=dof,
                    coverage_factor=factor, accuracy=accuracy, repeats=repeats)


# --------------------------------------------------------------------------- verdicts

@dataclass(frozen=True)
class Verdict:
    """One comparison of the book: what, the paper's side, ours, the verdict word and why.

    Fields (texts unless said): ``artifact`` (the paper's table/figure/cell, e.g.
    'wong2020 Table 1, FGSM-RS alpha = 10/255'), ``claim`` (what is compared), ``paper``,
    ``ours`` ('45.0 ± 3.3% (3 seeds, n = 1,000)' or the rule's numbers), ``verdict`` (one of
    VERDICTS), ``detail`` (gap and its interval, the rule's outcome, the likely reason, or
    what it needs), ``scale`` ('<kind>: <what>'), and the numbers behind them where there
    are numbers: ``paper_value``, ``ours_mean``, ``ours_lo``, ``ours_hi`` (floats or None).
    """

    artifact: str
    claim: str
    paper: str
    ours: str
    verdict: str
    detail: str
    scale: str
    paper_value: float | None = None
    ours_mean: float | None = None
    ours_lo: float | None = None
    ours_hi: float | None = None

    def __post_init__(self):
        for name in ("artifact", "claim", "paper", "ours", "verdict", "detail", "scale"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"Verdict.{name} must be a text, got {getattr(self, name)!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS} (use the module's constants), "
                             f"got {self.verdict!r}")
        if not self.artifact.strip() or not self.claim.strip():
            raise ValueError("a verdict needs the artifact (which table/figure) and the claim")
        if self.verdict in (DIFFERS, NOT_RUN) and not self.detail.strip():
            raise ValueError(f"a '{self.verdict}' verdict needs its detail (the reason / what "
                             f"it needs)")

    @property
    def text(self) -> str:
        """'differs: <detail>' (the verdict word first, as plots.verdict_kind reads it)."""
        return f"{self.verdict}: {self.detail}" if self.detail else self.verdict

    def row(self) -> dict:
        """This verdict as a dict (a row of the closing table and of the JSON rows file)."""
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> "Verdict":
        """The Verdict of a dict written by :meth:`row` (unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"verdict row has unknown keys {sorted(unknown)}; known: "
                             f"{sorted(names)}")
        return cls(**row)

    def comparison_row(self) -> dict:
        """A row for ``fatlib.plots.comparison_table``: what, paper, ours, settings, verdict."""
        return dict(what=f"{self.artifact}: {self.claim}", paper=self.paper, ours=self.ours,
                    settings=self.scale, verdict=self.text)


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"pass {what} (a non-empty text)")
    return value.strip()


def scale_kind(scale: str) -> str:
    """The kind of a scale text '<kind>: <what>' (one of SCALES); ValueError if malformed."""
    kind, sep, what = (scale or "").partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in SCALES or not what.strip():
        raise ValueError(f"scale must be '<kind>: <what>' with kind one of {SCALES} and the "
                         f"settings named, e.g. 'record scale: PreAct ResNet-18 width 16, "
                         f"50,000 images, 15 epochs'; got {scale!r}")
    return kind


def _paper_spread(paper, paper_sd, paper_seeds, accuracy: bool) -> tuple[float, float | None, str]:
    """The paper's value, its sd (or None) and how the sd was given."""
    if paper_sd is not None and paper_seeds is not None:
        raise ValueError("pass the paper's spread once: paper_sd or paper_seeds, not both")
    how = ""
    if paper_seeds is not None:
        seeds = _values(paper_seeds, "paper_seeds")
        if paper is None:
            paper = fmean(seeds)
        paper_sd = stdev(seeds) if len(seeds) >= 2 else None
        how = f"sd of {len(seeds)} seeds" if paper_sd is not None else ""
    elif paper_sd is not None:
        paper_sd = float(paper_sd)
        if not math.isfinite(paper_sd) or paper_sd < 0:
            raise ValueError(f"paper_sd must be a standard deviation >= 0, got {paper_sd!r}")
        how = "sd"
    if paper is None:
        raise ValueError("pass the paper's number (paper=46.06) or its seeds' values "
                         "(paper_seeds=[...])")
    paper = float(paper)
    if not math.isfinite(paper):
        raise ValueError(f"the paper's number must be finite, got {paper!r}")
    if accuracy:
        _check_accuracy(paper, "the paper's number")
        if paper_seeds is not None:
            for v in paper_seeds:
                _check_accuracy(float(v), "paper seed value")
    return paper, paper_sd, how


def compare(artifact: str, claim: str, *, paper: float | None, ours: Sequence[float],
            n: int | None, scale: str, paper_sd: float | None = None,
            paper_seeds: Sequence[float] | None = None, reason: str | None = None,
            accuracy: bool = True, digits: int = 1, paper_digits: int = 2) -> Verdict:
    """The verdict on a number: REPRODUCED if the paper's value is in our widened interval,
    else DIFFERS (with the gap and the caller's likely reason).

    Implements: |m - paper| <= h + 1.96 sd_paper, h from :func:`interval`; only at paper scale.
    Args:
        artifact: the paper's table/figure/cell ('wong2020 Table 1, FGSM-RS alpha = 10/255').
        claim: the quantity ('PGD-50-10 accuracy, eps = 8/255').
        paper: the paper's number (percent for an accuracy); may be None with paper_seeds.
        ours: our measurements, one per seed (percent for an accuracy).
        n: test images each of our measurements used.
        scale: '<kind>: <what>' with kind PAPER_SCALE (other kinds raise, see Raises).
        paper_sd: the paper's standard deviation over seeds, when it gives one.
        paper_seeds: the paper's per-seed values, when it gives them (their sd is used).
        reason: the likely reason should ours differ; required when it does.
        accuracy: see :func:`interval`.
        digits, paper_digits: decimals in the texts for ours and for the paper.
    Returns:
        Verdict (REPRODUCED or DIFFERS).
    Raises:
        ValueError: bad inputs (see :func:`interval`); a scale below the paper's (state a
            qualitative claim with :func:`check`, or use :func:`not_run`); a DIFFERS
            without ``reason`` (the message gives the gap).
    """
    artifact, claim = _text(artifact, "the artifact"), _text(claim, "the claim")
    kind = scale_kind(scale)
    if kind != PAPER_SCALE:
        raise ValueError(f"compare() judges a number against the paper's only at paper scale, "
                         f"not at {kind!r} (a number at reduced scale never 'reproduces' the "
                         f"paper's): state a qualitative claim and test it with check(..., "
                         f"rule=greater(...)/collapses(...)/survives(...)), or use not_run(...) "
                         f"saying what the paper-scale number needs")
    paper, paper_sd, how = _paper_spread(paper, paper_sd, paper_seeds, accuracy)
    ours_iv = interval(ours, n, accuracy=accuracy)
    unit = "%" if accuracy else ""
    paper_text = f"{paper:.{paper_digits}f}" + (
        f" ± {paper_sd:.{paper_digits}f}{unit} ({how})" if paper_sd is not None else unit)
    gap = ours_iv.mean - paper
    widened = ours_iv.half_width + (Z95 * paper_sd if paper_sd else 0.0)
    d = digits
    detail = f"ours - paper = {gap:+.{d}f} [{gap - widened:+.{d}f}, {gap + widened:+.{d}f}]"
    if paper_sd:
        detail += (f" (our half-width {ours_iv.half_width:.{d}f} + 1.96 x paper sd "
                   f"{paper_sd:.{paper_digits}f})")
    if abs(gap) <= widened:
        word = REPRODUCED
    else:
        word = DIFFERS
        detail = _with_reason(artifact, claim, f"ours differs from the paper, {detail}", detail, reason)
    return Verdict(artifact=artifact, claim=claim, paper=paper_text,
                   ours=ours_iv.text(digits), verdict=word, detail=detail, scale=scale.strip(),
                   paper_value=paper, ours_mean=ours_iv.mean, ours_lo=ours_iv.lo,
                   ours_hi=ours_iv.hi)


# --------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class RuleResult:
    """The outcome of one qualitative rule: ``rule`` (its name), ``passed``, ``ours`` (our
    numbers, as text) and ``detail`` (what was tested, with its numbers)."""

    rule: str
    passed: bool
    ours: str
    detail: str


def greater(a: Sequence[float], b: Sequence[float], n: int | None, *,
            names: tuple[str, str] = ("A", "B"), accuracy: bool = True,
            digits: int = 1, repeats: str = "seed") -> RuleResult:
    """Ordering rule: A's mean is above B's, with the 95% interval of the difference above 0.

    Implements: d = m_A - m_B, u_d = sqrt(u_A^2 + u_B^2), h_d = t_{0.975}(nu) u_d with nu by
    Welch-Satterthwaite over the two seed terms; passes when d - h_d > 0. The binomial errors
    are treated as independent, which is conservative when A and B are scored on the same
    images (their errors are then positively correlated). For 'A below B' swap the arguments.
    Args:
        a, b: per-seed measurements of A and of B (percent for accuracies).
        n: test images each measurement used.
        names: how A and B are called in the texts ('FGSM-RS', 'FGSM').
        accuracy: see :func:`interval`.
        digits: decimals in the texts.
        repeats: what one measurement is (see :func:`interval`).
    Returns:
        RuleResult.
    """
    ia, ib = (interval(v, n, accuracy=accuracy, repeats=repeats) for v in (a, b))
    total = ia.std_error ** 2 + ib.std_error ** 2
    parts = [(iv.seed_variance, iv.k - 1) for iv in (ia, ib) if iv.k >= 2]
    half = _t975(_welch_satterthwaite(total, parts)) * math.sqrt(total)
    diff = ia.mean - ib.mean
    d = digits
    passed = diff - half > 0
    outcome = ("above 0" if passed else "includes 0" if diff + half >= 0 else "below 0")
    detail = (f"{names[0]} - {names[1]} = {diff:+.{d}f} [{diff - half:+.{d}f}, "
              f"{diff + half:+.{d}f}]: {outcome}")
    ours = f"{names[0]} {ia.text(d)}; {names[1]} {ib.text(d)}"
    return RuleResult(rule="greater", passed=passed, ours=ours, detail=detail)


def _per_seed(values, n, name: str, digits: int):
    values = _values(values)
    bounds = [interval([v], n) for v in values]
    listed = ", ".join(f"{v:.{digits}f}" for v in values)
    return bounds, f"{name} {listed}% (n = {n:,} each)"


def collapses(values: Sequence[float], n: int, *, name: str = "A",
              digits: int = 1) -> RuleResult:
    """Collapse rule: every seed's robust accuracy is below COLLAPSE_THRESHOLD (10%), with
    its 95% binomial upper bound (one-seed interval) below it.

    Args:
        values: per-seed robust (e.g. PGD-50-10) accuracies in percent.
        n: test images each used.
        name: what collapsed ('FGSM').
        digits: decimals in the texts.
    Returns:
        RuleResult; a run in the undecided band around the threshold fails both this and
        :func:`survives`.
    """
    bounds, ours = _per_seed(values, n, name, digits)
    passed = all(iv.hi < COLLAPSE_THRESHOLD for iv in bounds)
    worst = max(iv.hi for iv in bounds)
    detail = (f"{name} collapses: every seed's 95% upper bound below {COLLAPSE_THRESHOLD:g}% "
              f"(highest {worst:.{digits}f}%)" + ("" if passed else ": not so"))
    return RuleResult(rule="collapses", passed=passed, ours=ours, detail=detail)


def survives(values: Sequence[float], n: int, *, name: str = "A",
             digits: int = 1) -> RuleResult:
    """No-collapse rule: every seed's 95% binomial lower bound is above COLLAPSE_THRESHOLD.

    Args: as :func:`collapses` (name: what did not collapse, 'FGSM-RS').
    Returns:
        RuleResult.
    """
    bounds, ours = _per_seed(values, n, name, digits)
    passed = all(iv.lo > COLLAPSE_THRESHOLD for iv in bounds)
    lowest = min(iv.lo for iv in bounds)
    detail = (f"{name} does not collapse: every seed's 95% lower bound above "
              f"{COLLAPSE_THRESHOLD:g}% (lowest {lowest:.{digits}f}%)" + ("" if passed else
                                                                        ": not so"))
    return RuleResult(rule="survives", passed=passed, ours=ours, detail=detail)


def _bounds(bound, k: int, what: str) -> list[float]:
    """A bound given as one number or one per value, as k floats (inf allowed)."""
    if isinstance(bound, (int, float)) and not isinstance(bound, bool):
        return [float(bound)] * k
    values = [float(b) for b in bound]
    if len(values) != k or any(math.isnan(b) for b in values):
        raise ValueError(f"{what}: pass one number for all values or one per value ({k}), "
                         f"not NaN; got {bound!r}")
    return values


def _num(value: float, digits: int, sign: str = "") -> str:
    """A number with `digits` decimals, or in e-notation when it is too small to show so."""
    if value != 0 and abs(value) < 10.0 ** -digits:
        return f"{value:{sign}.1e}"
    return f"{value:{sign}.{digits}f}"


def _range_text(lo: float, hi: float, digits: int) -> str:
    if math.isinf(lo):
        return f"<= {_num(hi, digits)}"
    if math.isinf(hi):
        return f">= {_num(lo, digits)}"
    return f"in [{_num(lo, digits)}, {_num(hi, digits)}]"


def within(values: Sequence[float], *, lo=-math.inf, hi=math.inf, name: str = "A",
           digits: int = 3) -> RuleResult:
    """Bound rule: every value lies in [lo, hi] (one bound for all values, or one per value).

    For a quantity without a binomial error, where the interval rules do not apply: an exact
    computation against the paper's printed value (lo, hi = that value -/+ half a unit of
    its last printed digit: 'about 7/255' gives [6.5, 7.5]), an identity checked in floating
    point (its rounding tolerance), or a statistic against a bound that the paper or a lemma
    states ('never above 1.05'; 'at least Lemma 2's bound').
    Args:
        values: the computed values.
        lo, hi: the bounds, a number or one per value (-inf / inf for a one-sided bound).
        name: what the values are ('equivalent FGSM step (/255)').
        digits: decimals in the texts.
    Returns:
        RuleResult; its detail gives the bound and the smallest margin (negative: outside).
    Raises:
        ValueError: empty or non-finite values, bounds of the wrong length, or lo > hi.
    """
    vals = _values(values, f"{name} values")
    los, his = _bounds(lo, len(vals), "lo"), _bounds(hi, len(vals), "hi")
    if any(a > b for a, b in zip(los, his)):
        raise ValueError(f"within(): lo must not exceed hi, got lo={lo!r}, hi={hi!r}")
    margin = min(min(v - a, b - v) for v, a, b in zip(vals, los, his))
    d = digits
    shared = len(set(los)) == 1 and len(set(his)) == 1
    bound = (_range_text(los[0], his[0], d) if shared else "each within its own bound")
    passed = margin >= 0
    detail = (f"{name} {bound}: " + ("so" if passed else "not so")
              + f" (smallest margin {_num(margin, d, '+')})")
    ours = f"{name} " + ", ".join(_num(v, d) for v in vals)
    return RuleResult(rule="within", passed=passed, ours=ours, detail=detail)


def all_of(*results: RuleResult) -> RuleResult:
    """A claim made of several rules ('FGSM collapses, FGSM-RS does not'): passes when all do.

    Args:
        results: RuleResults of :func:`greater`, :func:`collapses`, :func:`survives`, all_of.
    Returns:
        RuleResult whose texts join the parts' with '; ', each measurement named once (a
        chain A > B > C measures B in two rules).
    """
    if not results or not all(isinstance(r, RuleResult) for r in results):
        raise ValueError("all_of() takes one or more rule results: all_of(collapses(...), "
                         "survives(...))")
    return RuleResult(rule="all_of(" + ", ".join(r.rule for r in results) + ")",
                      passed=all(r.passed for r in results),
                      ours="; ".join(dict.fromkeys(part for r in results
                                                   for part in r.ours.split("; "))),
                      detail="; ".join(r.detail for r in results))


def _with_reason(artifact: str, claim: str, found: str, detail: str, reason) -> str:
    """A differs verdict's detail with its likely reason; ValueError when no reason is given."""
    if not (isinstance(reason, str) and reason.strip()):
        raise ValueError(f"{artifact} ({claim}): {found}; pass reason='...' naming the likely cause")
    return f"{detail}; likely reason: {reason.strip()}"


def check(artifact: str, claim: str, rule: RuleResult, *, paper: str, scale: str,
          reason: str | None = None) -> Verdict:
    """The verdict on a stated qualitative claim, tested by a rule of this module.

    Passing: REDUCED below the paper's scale, REPRODUCED at paper scale. Failing: DIFFERS
    with the rule's numbers and the caller's likely reason.
    Args:
        artifact: the paper's table/figure ('wong2020 Table 1').
        claim: the claim in words ('FGSM collapses, FGSM-RS does not').
        rule: the result of :func:`greater`, :func:`collapses`, :func:`survives`,
            :func:`within` or :func:`all_of` on our measurements.
        paper: the paper's evidence for the claim, as text ('FGSM 0.00%, FGSM-RS 46.06%').
        scale: '<kind>: <what>' (see :data:`SCALES`), naming the settings.
        reason: the likely reason should the claim fail here; required when it does.
    Returns:
        Verdict.
    Raises:
        ValueError: no rule (a qualitative claim needs one), an empty claim/paper, a bad
            scale, or a failed claim without ``reason``.
    """
    artifact, claim = _text(artifact, "the artifact"), _text(claim, "the claim")
    if not isinstance(rule, RuleResult):
        raise ValueError(f"a qualitative claim needs a rule: pass rule=greater(a, b, n) / "
                         f"collapses(x, n) / survives(x, n) / all_of(...), got {rule!r}")
    paper = _text(paper, "the paper's evidence for the claim")
    kind = scale_kind(scale)
    detail = rule.detail
    if rule.passed:
        word = REPRODUCED if kind == PAPER_SCALE else REDUCED
    else:
        word = DIFFERS
        detail = _with_reason(artifact, claim, f"the claim fails here ({rule.detail})", detail, reason)
    return Verdict(artifact=artifact, claim=claim, paper=paper, ours=rule.ours, verdict=word,
                   detail=detail, scale=scale.strip())


def not_run(artifact: str, claim: str, *, paper: str, need: str, scale: str = "") -> Verdict:
    """The verdict on a comparison this book does not compute: NOT_RUN with what it needs.

    Args:
        artifact, claim: as in :func:`compare`.
        paper: the paper's number or evidence, as text ('72.3% (Table 4)').
        need: what running it would take ('ImageNet (140 GB) and ~12 GPU hours').
        scale: the scale it would need, '<kind>: <what>' (optional).
    Returns:
        Verdict.
    Raises:
        ValueError: an empty need (say what it needs), or a malformed scale.
    """
    artifact, claim = _text(artifact, "the artifact"), _text(claim, "the claim")
    need = _text(need, "need= what running it would take (data, hardware, time)")
    if scale:
        scale_kind(scale)
    return Verdict(artifact=artifact, claim=claim, paper=_text(paper, "the paper's number"),
                   ours="-", verdict=NOT_RUN, detail=f"needs {need}", scale=scale.strip())


# --------------------------------------------------------------------------- rows files

def write_rows(rows: Iterable[Verdict | dict], path: str | os.PathLike) -> Path:
    """Write a chapter's verdicts as JSON, atomically (a temporary file, then a rename).

    Args:
        rows: Verdicts (or their ``row()`` dicts, which are validated).
        path: the JSON file; its folder is created.
    Returns:
        the path written.
    """
    verdicts = [r if isinstance(r, Verdict) else Verdict.from_row(dict(r)) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"format": ROWS_FORMAT, "rows": [v.row() for v in verdicts]},
                         indent=1, ensure_ascii=False, allow_nan=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(payload + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_rows(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Verdict]:
    """The verdicts of one or more rows files (a folder: its ``*.json`` files, sorted).

    Args:
        paths: a file, a folder, or several of them, in the order the scoreboard lists them.
    Returns:
        list of Verdict, file by file, in each file's order.
    Raises:
        ValueError: a file that is not a verdict rows file (named in the message).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    out: list[Verdict] = []
    for f in files:
        data = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != ROWS_FORMAT:
            raise ValueError(f"{f} is not a verdict rows file (format {ROWS_FORMAT!r}); write "
                             f"it with fatlib.verdicts.write_rows")
        try:
            out.extend(Verdict.from_row(r) for r in data["rows"])
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{f}: bad verdict row: {e}") from e
    return out
