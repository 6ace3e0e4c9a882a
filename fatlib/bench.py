"""What a step costs: the book's one timing function and the benchmark of every method.

``python -m fatlib bench [--json [FILE]] [--quick | --paper] [--width W] ...``

1. :func:`timing` is the one timing function every page uses (directly, or through
   :func:`median_seconds`, :func:`step_timing` and :func:`seconds_per_step`). It calls the
   configurations round by round (one call of each per round, so that a change in the load
   of a shared machine hits all of them alike) and returns, per configuration, the median
   over rounds, the spread (min / max, quartiles) and ratios to a named baseline. A ratio
   comes with the spread of its per-round ratios (each round's configuration over the same
   round's baseline); it is *trusted* only with at least :data:`MIN_ROUNDS` rounds and a
   spread (interquartile range / median) of at most :data:`MAX_SPREAD`.
2. :func:`measure` times one optimizer step of each method the training loop runs (the step
   of ``fatlib.loop``, with the callables of ``fatlib.methods``; nothing re-implemented):
   standard, FGSM-RS, free (per replay), PGD-K (K = 2, 7, 10), GradAlign, ZeroGrad,
   MultiGrad (N = 3), N-FGSM, ELLE, ELLE-A, l2 1-step and 7-step, in fp32 and in bf16 (bf16
   only where it is native: a CPU with AVX-512-BF16 or AMX, or CUDA), in the memory layout
   fatlib's recipes train in (:data:`PICKED_LAYOUT`) and, for a few methods, in the other
   one too; every configuration interleaved in one call of :func:`timing`. Each method's
   ratio to a standard step is set against its floor in forward-equivalents (a forward pass
   1, a backward pass to the input only 1, to the input and the parameters 2: a standard
   step 3, FGSM 5, PGD-K 3 + 2K), and the performance targets of DESIGN.md / issue 17 get
   a pass or fail. :func:`pgd_cost` times early-stopping PGD-50-10 evaluation against the
   plain computation at several robust fractions.

The numbers are ratios measured on this machine at this moment; on a shared CPU other
processes add noise (the spread says how much). More torch threads than free cores can make
every step many times slower: by default the benchmark uses the cores the load average
leaves free (:func:`free_threads`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

EPS = 8 / 255
L2_EPS = 0.5           # the l2 rows' eps (pixels); a step's cost does not depend on it
MAX_SPREAD = 0.10      # a ratio is trusted when its per-round IQR / median is at most this
MIN_ROUNDS = 3         # ... and it has at least this many timed rounds
FORMAT = "fatlib.bench/2"
PICKED_LAYOUT = "channels_last"  # fatlib's ResNet recipes (sweeps.RESNET, wong2020.config)
LAYOUTS = ("nchw", "channels_last")  # train every method channels_last


# --------------------------------------------------------------------------- the timing function

def _quantile(values, q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's default)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def spread_stats(values) -> dict:
    """Median, min, max, quartiles and relative spread ((q3 - q1) / median) of some values."""
    med = statistics.median(values)
    q1, q3 = _quantile(values, 0.25), _quantile(values, 0.75)
    return {"median": med, "min": min(values), "max": max(values), "q1": q1, "q3": q3,
            "spread": (q3 - q1) / med if med > 0 else math.inf}


@dataclass(frozen=True)
class Timing:
    """Per-round seconds of some configurations, timed round by round by :func:`timing`.

    seconds: name -> seconds of each timed round, in round order; calls: (round, name) of
    every call in the order made (warm-up rounds included, round < 0); baseline: the name
    ratios are taken to by default (or None); max_spread, min_rounds: the trust rule.
    """

    seconds: dict
    calls: list = field(default_factory=list)
    baseline: str | None = None
    max_spread: float = MAX_SPREAD
    min_rounds: int = MIN_ROUNDS

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values())))

    @property
    def median(self) -> dict:
        """name -> median seconds over the timed rounds."""
        return {name: statistics.median(s) for name, s in self.seconds.items()}

    def stats(self, name: str) -> dict:
        """A configuration's median, min, max, q1, q3 (seconds) and relative spread."""
        return spread_stats(self.seconds[name])

    def _base(self, baseline: str | None) -> str:
        base = baseline if baseline is not None else self.baseline
        if base is None or base not in self.seconds:
            raise ValueError(f"ratio needs a baseline among {sorted(self.seconds)}; got {base!r}")
        return base

    def ratio(self, name: str, baseline: str | None = None) -> float:
        """Median seconds of `name` over the median seconds of the baseline."""
        base = self._base(baseline)
        return statistics.median(self.seconds[name]) / statistics.median(self.seconds[base])

    def round_ratios(self, name: str, baseline: str | None = None) -> list:
        """Each round's seconds of `name` over the same round's seconds of the baseline."""
        base = self._base(baseline)
        return [a / b for a, b in zip(self.seconds[name], self.seconds[base])]

    def ratio_stats(self, name: str, baseline: str | None = None) -> dict:
        """The ratio, the min / max and relative spread of its per-round ratios, and whether
        it can be trusted (``trusted``, with ``why`` when not)."""
        per_round = self.round_ratios(name, baseline)
        s = spread_stats(per_round)
        why = None
        if len(per_round) < self.min_rounds:
            why = f"{len(per_round)} timed round(s), fewer than {self.min_rounds}: no spread measured"
        elif s["spread"] > self.max_spread:
            why = (f"the per-round ratios spread by {s['spread']:.0%} (IQR / median), more than "
                   f"{self.max_spread:.0%}")
        return {"ratio": self.ratio(name, baseline), "low": s["min"], "high": s["max"],
                "spread": s["spread"], "trusted": why is None, "why": why}

    def trusted(self, name: str, baseline: str | None = None) -> bool:
        return self.ratio_stats(name, baseline)["trusted"]

    def spread_text(self, name: str, baseline: str | None = None, digits: int = 2) -> str:
        """The per-round ratios' range in words, saying when it is too wide to trust the ratio:
        '1.50-1.60 over 4 rounds' or '... over 4 rounds: not to be trusted (...)'."""
        r, d = self.ratio_stats(name, baseline), digits
        text = f"{r['low']:.{d}f}-{r['high']:.{d}f} over {self.rounds} rounds"
        return text if r["trusted"] else f"{text}: not to be trusted ({r['why']})"

    def warnings(self, baseline: str | None = None) -> list:
        """A line per ratio to the baseline that is not to be trusted."""
        base = self._base(baseline)
        out = []
        for name in self.seconds:
            r = self.ratio_stats(name, base)
            if not r["trusted"] and name != base:
                out.append(f"{name} / {base} = {r['ratio']:.2f} is not to be trusted: {r['why']}")
        return out

    def summary(self, baseline: str | None = None) -> dict:
        """name -> stats (seconds) and, with a baseline, its ratio_stats (prefixed ratio_)."""
        out = {}
        for name in self.seconds:
            row = {f"{k}_s" if k != "spread" else k: v for k, v in self.stats(name).items()}
            row["rounds_s"] = list(self.seconds[name])
            if baseline is not None or self.baseline is not None:
                row.update({f"ratio_{k}" if k != "ratio" else k: v
                            for k, v in self.ratio_stats(name, baseline).items()})
            out[name] = row
        return out


def _measured(value, elapsed: float) -> float:
    """A function's own measurement (a number it returns) or its wall time."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return elapsed


def timing(fns: dict, *, baseline: str | None = None, warmup: int = 1, rounds: int = 3,
           rotate: bool = False, max_spread: float = MAX_SPREAD,
           clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time functions round by round in this process: the book's one timing function.

    One call of each function per round, so that a change in machine load hits all of them
    alike; the first ``warmup`` rounds are not timed (first-call costs: data caches, the
    allocator, kernel selection).
    Args:
        fns: name -> function of no arguments. A function may return its own measurement in
            seconds (a number, e.g. a training loop's timers without its set-up); otherwise
            its wall time (``clock``) is used.
        baseline: the name ratios are taken to by default (one of ``fns``, or None).
        warmup: untimed rounds.
        rounds: timed rounds.
        rotate: start round r at the (r mod n)-th function (so that no function always runs
            right after the same other one); False: the order of ``fns`` in every round.
        max_spread: the largest relative spread (IQR / median) of a trusted ratio.
        clock: seconds now (tests pass a fake clock).
    Returns:
        Timing (per-round seconds; .median, .stats, .ratio, .ratio_stats, .summary).
    Raises:
        ValueError: no functions, rounds < 1, warmup < 0, or a baseline not in ``fns``.
    """
    if not fns or rounds < 1 or warmup < 0:
        raise ValueError(f"timing needs at least one function, rounds >= 1 and warmup >= 0; got "
                         f"{len(fns)} functions, rounds={rounds}, warmup={warmup}")
    if baseline is not None and baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of {sorted(fns)}")
    names = list(fns)
    seconds, calls = {name: [] for name in names}, []
    for r in range(warmup + rounds):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            start = clock()
            value = fns[name]()
            elapsed = clock() - start
            calls.append((r - warmup, name))
            if r >= warmup:
                seconds[name].append(_measured(value, elapsed))
    return Timing(seconds, calls, baseline, max_spread)


def median_seconds(fns: dict, *, warmup: int = 1, rounds: int = 3) -> dict:
    """Median seconds per call of each function, timed round by round (:func:`timing`).

    Args:
        fns: name -> function of no arguments (it may return its own measurement in seconds).
        warmup: untimed rounds.
        rounds: timed rounds (the median over them is reported).
    Returns:
        name -> median seconds.
    Raises:
        ValueError: no functions, or rounds < 1.
    """
    return timing(fns, warmup=warmup, rounds=rounds).median


def step_timing(configs: dict, *, baseline: str | None = None, steps: int = 3, warmup: int = 1,
                rounds: int = 3) -> Timing:
    """Seconds per optimizer step of each training config, from the loop's own timers.

    Implements: the cost of a training method as the book reports it: ``steps`` steps of
    ``fatlib.train.train`` (attack + parameter update, without data loading, evaluation or
    set-up: the loop's ``time_attack + time_update``), timed round by round by :func:`timing`.
    Args:
        configs: name -> TrainConfig (with at least ``steps`` minibatches of training data).
        baseline: the name ratios are taken to (or None).
        steps: optimizer steps per timing.
        warmup, rounds: as in :func:`timing`.
    Returns:
        Timing of seconds per step.
    """
    from fatlib import train

    def timed(config):
        def run():
            last = train.train(config.replace(eval_every=steps), max_steps=steps).history[-1]
            return (last["time_attack"] + last["time_update"]) / steps
        return run

    return timing({name: timed(cfg) for name, cfg in configs.items()}, baseline=baseline,
                  warmup=warmup, rounds=rounds)


def seconds_per_step(configs: dict, *, steps: int = 3, warmup: int = 1, rounds: int = 3) -> dict:
    """Median seconds per optimizer step of each training config (:func:`step_timing`).

    Returns:
        name -> seconds per step.
    """
    return step_timing(configs, steps=steps, warmup=warmup, rounds=rounds).median


# --------------------------------------------------------------------------- the methods

@dataclass(frozen=True)
class StepSpec:
    """One method of the benchmark: its label, TrainConfig fields, and its floor.

    floor: forward-equivalents of one step (forward 1, backward to the input 1, backward to
    the input and the parameters 2); count: how the floor is counted; exact: False where
    the count is an estimate (double backprop); fresh_elle: ELLE-A timed before its first
    jump (lambda 0: the error without a graph).
    """

    label: str
    fields: dict
    floor: float
    count: str
    exact: bool = True
    fresh_elle: bool = False

    @property
    def floor_ratio(self) -> float:
        """The floor as a multiple of a standard step (3 forward-equivalents)."""
        return self.floor / 3


def _pgd(k: int, norm: str = "linf") -> StepSpec:
    eps = {"linf": EPS, "l2": L2_EPS}[norm]
    name = "PGD" if norm == "linf" else "l2 PGD"
    return StepSpec(f"{name}-{k}", dict(method="pgd", pgd_steps=k, norm=norm, eps=eps), 3 + 2 * k,
                    f"attack: {k} x (forward 1 + backward to the input 1); update 3")


ONE_STEP = "attack: forward 1 + backward to the input 1; update 3"
METHODS = {
    "standard": StepSpec("standard", dict(method="standard"), 3,
                         "forward 1 + backward to the input and the parameters 2"),
    "fgsm_rs": StepSpec("FGSM-RS", dict(method="fgsm", fgsm_init="random", alpha=1.25 * EPS), 5,
                        ONE_STEP),
    "free": StepSpec("free (per replay, m = 8)", dict(method="free", free_m=8), 3,
                     "one forward 1 + backward 2 gives both the update and the delta's gradient"),
    "pgd2": _pgd(2), "pgd7": _pgd(7), "pgd10": _pgd(10),
    "gradalign": StepSpec("GradAlign", dict(method="gradalign", ga_lambda=0.2), 13,
                          "FGSM (zero init) 5; gradient at x 2; gradient at x + eta with its "
                          "graph 2 and its double backprop ~4 (twice what it differentiates)",
                          exact=False),
    "zerograd": StepSpec("ZeroGrad (q = 0.35)", dict(method="zerograd", zg_q=0.35), 5,
                         ONE_STEP + " (+ a per-image quantile)"),
    "multigrad": StepSpec("MultiGrad (N = 3)", dict(method="multigrad", mg_n=3), 9,
                          "attack: 3 x (forward 1 + backward to the input 1); update 3"),
    "nfgsm": StepSpec("N-FGSM", dict(method="nfgsm"), 5, ONE_STEP),
    "elle": StepSpec("FGSM + ELLE (lambda 1000)", dict(method="fgsm", elle_lambda=1000.0), 14,
                     "FGSM 5; ELLE: forward of 3B points 3 + their backward to the parameters 6"),
    "elle_a": StepSpec("FGSM + ELLE-A, lambda 0", dict(method="fgsm", elle_lambda=4000.0,
                                                        elle_adaptive=True), 8,
                       "FGSM 5; ELLE-A before its first jump: forward of 3B points 3, no graph",
                       fresh_elle=True),
    "l2_1": StepSpec("l2 1-step", dict(method="l2fast", norm="l2", eps=L2_EPS), 5, ONE_STEP),
    "l2_7": _pgd(7, "l2"),
}
LAYOUT_METHODS = ("standard", "fgsm_rs", "gradalign")  # also timed in the other layout
# (numerator, denominator, comparison, limit, source): the targets of DESIGN.md / issue 17
STEP_TARGETS = (
    ("fgsm_rs", "standard", "<=", 1.8, "wong2020 FGSM-RS: the reference code pays 2 standard "
                                       "steps, the floor is 5/3 (target 1.8)"),
    ("gradalign", "fgsm_rs", "<=", 2.5, "andriushchenko2020: GradAlign about 3x FGSM-RS on a GPU "
                                        "(target 2.5)"),
    ("elle", "fgsm_rs", "<=", 1.5, "Abad Rocamora et al. 2024: ELLE needs no double backprop "
                                   "(target 1.5)"),
    ("multigrad", "fgsm_rs", "<=", 2.2, "golgooni2021 §4.4: MultiGrad 43.9 vs FGSM-RS 22.5 min "
                                        "on a T4, 1.95x (target 2.2)"),
)
BF16_TARGET = {"AMX": 3.0, "AVX-512-BF16": 2.0}
PGD_TARGETS = ((0.45, 0.5, "issue 17: PGD-50-10 of a 45%-robust model at most 0.5x the plain "
                           "cost (early exit)"),
               (1.0, 1.05, "DESIGN.md: early exit costs at most 1.05x the plain computation when "
                           "every example is robust"))


def picked_layout(method: str) -> str:
    """The memory layout fatlib's recipes train `method` in ('channels_last' for every one)."""
    if method not in METHODS:
        raise ValueError(f"unknown bench method {method!r}; one of {sorted(METHODS)}")
    return PICKED_LAYOUT


def floor(method: str) -> float:
    """A method's floor as a multiple of a standard step (FGSM 5/3, PGD-K (3 + 2K) / 3)."""
    return METHODS[method].floor_ratio


def cpu_features() -> dict:
    """Whether this CPU has AVX2, AVX-512-BF16 and AMX (from /proc/cpuinfo) and oneDNN's
    bf16 support (fatlib.train.native_bf16_cpu); ``bf16`` names the fastest ('AMX',
    'AVX-512-BF16' or None)."""
    from fatlib.devices import native_bf16_cpu

    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    amx, avx512 = "amx_bf16" in flags, "avx512_bf16" in flags
    return {"avx2": "avx2" in flags, "avx512_bf16": avx512, "amx_bf16": amx,
            "native_bf16": native_bf16_cpu(),
            "bf16": "AMX" if amx else "AVX-512-BF16" if avx512 else None}


def free_threads() -> int:
    """Torch threads to use: the cores the 1-minute load average leaves free (at least 1)."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(torch.get_num_threads(), cores - round(busy)))


def step_config(method: str, *, precision: str, layout: str, model: str = "preact_resnet18",
                width: int = 16, batch: int = 128, seed: int = 0):
    """The TrainConfig of one timed step: `batch` CIFAR-10 training images, no augmentation,
    no history, a flat learning rate (its value does not change a step's cost)."""
    from fatlib.train import TrainConfig

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    kw = {"n_filters": 4} if model == "cnn1" else {"base_width": width}
    return TrainConfig(dataset="cifar10", model=model, model_kw=kw, n_train=batch, n_eval=0,
                       epochs=1, batch_size=batch, augment=False, lr_schedule="flat",
                       lr_max=0.01, precision=precision, channels_last=layout == "channels_last",
                       seed=seed, **METHODS[method].fields)


def step_fn(config, *, fresh_elle: bool = False, device: str = "cpu",
            compiled: bool = False) -> Callable[[], float]:
    """A function that runs one optimizer step of the training loop and returns its seconds.

    The step is ``fatlib.loop``'s own (attack, regularizer and update from
    ``fatlib.methods.make_method``, in the config's precision and layout) on the config's
    first minibatch, measured by the loop's timers (attack + update). fresh_elle: ELLE-A
    starts from lambda 0 at every call (its cost before the first jump). compiled: the
    network runs through ``torch.compile`` (its first call compiles; the parameters are the
    same tensors, so the step updates the same weights). The function's ``run`` attribute
    is the loop's run state it steps (``run.model``, its optimizer and data).
    """
    from fatlib import data
    from fatlib.devices import Dist, resolve_device
    from fatlib.loop import _Run

    dev = resolve_device(device)
    run = _Run(config, dev, Dist(), False, None)
    run.model.train()
    if compiled:
        run.model = run.net = torch.compile(run.model)
    x = run._to_device(data.to_float(run.images[: config.batch_size]))
    y = run.labels[: config.batch_size].to(dev)

    def step() -> float:
        run.step = 0               # the schedule's first step, at every call
        if fresh_elle:
            run.attack.elle = None
        before = run.times["attack"] + run.times["update"]
        run.train_step(x, y)
        return run.times["attack"] + run.times["update"] - before
    step.run = run                 # the loop's run state (model, optimizer, data) it steps
    return step


def precisions_here(device: str = "cpu") -> tuple[list, str | None]:
    """The precisions to time ('fp32', and 'bf16' where native or on CUDA) and a note when
    bf16 is left out."""
    if device.startswith("cuda") or cpu_features()["native_bf16"]:
        return ["fp32", "bf16"], None
    return ["fp32"], ("bf16 not timed: this CPU does not compute bf16 natively (no AVX-512-BF16 "
                      "or AMX; emulated bf16 is many times slower than fp32, and fatlib trains "
                      "in fp32 here)")


def _key(method: str, precision: str, layout: str) -> str:
    return f"{method}/{precision}/{layout}"


def _other(layout: str) -> str:
    return LAYOUTS[1 - LAYOUTS.index(layout)]


def step_configs(methods, precisions, *, layout_methods=LAYOUT_METHODS, **kw) -> dict:
    """key 'method/precision/layout' -> TrainConfig: every method in its picked layout, the
    layout_methods in the other layout too, in every precision."""
    out = {}
    for p in precisions:
        for m in methods:
            layouts = [picked_layout(m)] + ([_other(picked_layout(m))] if m in layout_methods
                                            else [])
            for lay in layouts:
                out[_key(m, p, lay)] = step_config(m, precision=p, layout=lay, **kw)
    return out


# --------------------------------------------------------------------------- PGD evaluation

def _labels_with_robust_fraction(model, x, fraction: float) -> torch.Tensor:
    """Labels = the model's predictions for the first round(fraction * n) examples (robust
    at a tiny eps), a wrong class for the others (misclassified before any attack)."""
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    k = round(fraction * len(pred))
    wrong = (pred + 1) % logits.shape[1]
    return torch.cat([pred[:k], wrong[k:]])


def pgd_cost(*, model: str = "preact_resnet18", width: int = 16, n: int = 20, steps: int = 50,
             restarts: int = 10, fractions=(0.0, 0.25, 0.45, 0.5, 0.75, 1.0), rounds: int = 1,
             seed: int = 0) -> dict:
    """Cost of early-exit PGD-K-R evaluation against the plain computation, by robust fraction.

    Implements DESIGN.md's evaluation target: ``attacks.pgd_search(early_stop=True)`` (restarts
    attack only examples still robust, an iteration stops updating examples already
    misclassified) against ``attacks.pgd(early_stop=False)`` (every example, every step), on
    an fp32 model in eval mode at an eps (1e-6) too small to break anything, with labels that
    make exactly the given fraction robust. Timed round by round by :func:`timing`.
    Returns:
        {"n", "steps", "restarts", "rounds", "plain_s", "fractions": [{"fraction",
        "measured" (robust fraction the attack reported), "seconds", "ratio", "spread",
        "trusted", "why"}]}.
    """
    from fatlib import attacks, models
    from fatlib.threat import ThreatModel

    torch.manual_seed(seed)
    kw = {"n_filters": 4} if model == "cnn1" else {"base_width": width}
    net = models.build(model, "cifar10", **kw).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 3, 32, 32, generator=g)
    threat = ThreatModel("linf", 1e-6)
    akw = dict(alpha=threat.eps / 4, steps=steps, restarts=restarts)
    labels = {f: _labels_with_robust_fraction(net, x, f) for f in fractions}
    robust = {}

    def run(f):
        def go():
            torch.manual_seed(seed)
            if f is None:
                attacks.pgd(net, x, labels[max(labels)], threat, early_stop=False, **akw)
                return None
            _, broken = attacks.pgd_search(net, x, labels[f], threat, early_stop=True, **akw)
            robust[f] = 1 - float(broken.float().mean()) if broken is not None else math.nan
            return None
        return go

    attacks.pgd(net, x, labels[max(labels)], threat, alpha=threat.eps, steps=2)  # warm-up
    t = timing({"plain": run(None), **{f: run(f) for f in fractions}}, baseline="plain",
               warmup=0, rounds=rounds)
    rows = [{"fraction": f, "measured": robust[f], "seconds": t.median[f],
             **{k: v for k, v in t.ratio_stats(f).items() if k in ("ratio", "spread", "trusted",
                                                                    "why")}}
            for f in fractions]
    return {"model": model, "width": width, "n": n, "steps": steps, "restarts": restarts,
            "rounds": rounds, "plain_s": t.median["plain"], "fractions": rows}


LOW_PRECISION_GAP = 0.3       # points: bf16-step PGD accuracy within this of fp32 PGD's (issue 17)
LOW_PRECISION_SPEEDUP = 1.8   # ... and at least this much faster, on every model
LOW_PRECISION_MODELS = 3
LOW_PRECISION_N = 1000
LOW_PRECISION_RECORDS = ("scale_preact18_w16_fgsm_rs_8", "rs16_wong2020_fgsm_zero_s0",
                         "rs16_wong2020_fgsmrs_a16_s0")  # three trained width-16 models


def low_precision_inputs(model, x: torch.Tensor) -> tuple:
    """The network and images of the low-precision attack: a channels-last copy of the model
    (the caller's is left as it is) and the images in that layout, where bf16 convolutions
    are fastest on CPUs with AVX-512-BF16 or AMX (the fp32 attack is the book's evaluation,
    in the model's own layout)."""
    import copy

    if x.dim() != 4:
        return model, x
    net = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return net, x.contiguous(memory_format=torch.channels_last)


def low_precision_pgd(models: dict, x: torch.Tensor, y: torch.Tensor, *, eps: float = EPS,
                      steps: int = 50, restarts: int = 10, rounds: int = 1,
                      batch_size: int = 256, seed: int = 0) -> dict:
    """Early-exit PGD-K-R with bf16 gradient steps against the fp32 attack, on trained models.

    Implements issue 17's acceptance rule for ``attacks.pgd(precision="bf16")`` (gradient
    steps under bf16 autocast, every candidate scored in fp32, on the channels-last copy of
    :func:`low_precision_inputs`) against the fp32 attack of the book's evaluation (the
    model's own layout): accepted when, on at least
    :data:`LOW_PRECISION_MODELS` models and :data:`LOW_PRECISION_N` test images, every
    model's bf16 accuracy is within :data:`LOW_PRECISION_GAP` points of its fp32 accuracy
    and the fp32 attack takes at least :data:`LOW_PRECISION_SPEEDUP` times as long. Both
    attacks start from the same random draws (seed); each model's two attacks are timed in
    the same rounds (:func:`timing`).
    Args:
        models: name -> classifier (its mode is restored).
        x, y: test images (uint8 or float in [0, 1]) and labels.
        eps: l-inf radius (alpha eps / 4); steps, restarts: K and R.
        rounds: timed rounds per model; batch_size: images per attack call.
    Returns:
        {"n", "steps", "restarts", "rows": [{"model", "fp32_acc", "bf16_acc", "gap",
        "fp32_s", "bf16_s", "speedup", "trusted", "why"}], "accepted" (None when too few
        models or images to judge), "why"}.
    """
    import functools

    from fatlib import attacks, evaluate
    from fatlib.threat import ThreatModel

    threat = ThreatModel("linf", eps)
    rows = []
    for name, model in models.items():
        correct = {}

        def run(precision):
            attack = functools.partial(attacks.pgd, threat=threat, alpha=eps / 4, steps=steps,
                                       restarts=restarts, early_stop=True, precision=precision)
            net, images = low_precision_inputs(model, x) if precision == "bf16" else (model, x)

            def go():
                torch.manual_seed(seed)
                correct[precision] = evaluate.attack_correct(net, images, y, attack,
                                                             batch_size=batch_size)
            return go

        t = timing({p: run(p) for p in attacks.PGD_PRECISIONS}, baseline="bf16", warmup=0,
                   rounds=rounds)
        acc = {p: evaluate.accuracy(c) for p, c in correct.items()}
        r = t.ratio_stats("fp32", "bf16")
        rows.append({"model": name, "fp32_acc": acc["fp32"], "bf16_acc": acc["bf16"],
                     "gap": acc["bf16"] - acc["fp32"], "fp32_s": t.median["fp32"],
                     "bf16_s": t.median["bf16"], "speedup": r["ratio"], "trusted": r["trusted"],
                     "why": r["why"]})
    too_few = [f"{len(rows)} models (the rule asks for {LOW_PRECISION_MODELS})"
               if len(rows) < LOW_PRECISION_MODELS else "",
               f"{x.shape[0]:,} images (the rule asks for {LOW_PRECISION_N:,})"
               if x.shape[0] < LOW_PRECISION_N else ""]
    why = "; ".join(w for w in too_few if w) or None
    passed = rows and all(abs(r["gap"]) <= LOW_PRECISION_GAP and r["speedup"] >= LOW_PRECISION_SPEEDUP
                          for r in rows)
    return {"n": int(x.shape[0]), "steps": steps, "restarts": restarts, "rows": rows,
            "accepted": None if why else bool(passed), "why": why}


def low_precision_pgd_of_records(records=LOW_PRECISION_RECORDS, *, n: int = LOW_PRECISION_N,
                                 **kw) -> dict:
    """:func:`low_precision_pgd` on records' models and the first n CIFAR-10 test images."""
    from fatlib import data, runs

    x, y = data.load("cifar10", "test", n=n)
    return low_precision_pgd({r: runs.load_record(r).model() for r in records}, x, y, **kw)


def _low_precision_targets(lp: dict) -> list:
    """The two bounds of the low-precision rule as targets: the largest gap, the least speed-up."""
    rows = lp["rows"]
    if not rows:
        return []
    source = (f"issue 17: bf16-step PGD within {LOW_PRECISION_GAP:g} points of fp32 PGD and "
              f"{LOW_PRECISION_SPEEDUP:g}x faster on {LOW_PRECISION_MODELS} trained models")
    return [_target(f"PGD-{lp['steps']}-{lp['restarts']} |bf16 - fp32| accuracy, points (largest "
                    f"of {len(rows)} models, {lp['n']:,} images)", max(abs(r["gap"]) for r in rows),
                    "<=", LOW_PRECISION_GAP, source, trusted=lp["why"] is None, why=lp["why"]),
            _target(f"PGD-{lp['steps']}-{lp['restarts']} fp32 / bf16 time (least of {len(rows)} "
                    f"models)", min(r["speedup"] for r in rows), ">=", LOW_PRECISION_SPEEDUP,
                    source, trusted=all(r["trusted"] for r in rows),
                    why="; ".join(r["why"] for r in rows if r["why"]) or None)]


# --------------------------------------------------------------------------- the report

def _target(name: str, value: float | None, op: str, limit: float, source: str, *,
            trusted: bool | None, why: str | None = None, floor_value: float | None = None,
            note: str | None = None) -> dict:
    passed = None if value is None else (value <= limit if op == "<=" else value >= limit)
    return {"name": name, "value": value, "op": op, "limit": limit, "pass": passed,
            "trusted": trusted, "why": why, "floor": floor_value, "source": source, "note": note}


def _step_targets(t: Timing, precision: str, bf16: str | None, width: int, device: str) -> list:
    """The step targets, as ratios in the picked layout and the training precision."""
    out = []
    for num, den, op, limit, source in STEP_TARGETS:
        a, b = (_key(m, precision, picked_layout(m)) for m in (num, den))
        if a not in t.seconds or b not in t.seconds:
            continue
        r = t.ratio_stats(a, b)
        out.append(_target(f"{num}/{den}", r["ratio"], op, limit, source, trusted=r["trusted"],
                           why=r["why"], floor_value=floor(num) / floor(den),
                           note=f"{precision}, {picked_layout(num)}"))
    fast, slow = _key("standard", "bf16", "channels_last"), _key("standard", "fp32", "nchw")
    name = "standard step fp32 nchw / bf16 channels_last"
    if device.startswith("cuda"):
        return out
    if bf16 is None or fast not in t.seconds or slow not in t.seconds:
        out.append(_target(name, None, ">=", 2.0, "DESIGN.md: at least 2.0x on AVX-512-BF16, 3x "
                           "on AMX", trusted=None, note="not measured: no native bf16 here"))
        return out
    r = t.ratio_stats(slow, fast)
    out.append(_target(name, r["ratio"], ">=", BF16_TARGET[bf16],
                       f"DESIGN.md: at least {BF16_TARGET[bf16]}x on {bf16} (measured 2.77x on "
                       f"a Zen 5 at width 64)", trusted=r["trusted"], why=r["why"],
                       note=f"this CPU: {bf16}; the target is stated for width 64 (here {width})"))
    return out


def _pgd_targets(pgd: dict) -> list:
    out = []
    by_f = {row["fraction"]: row for row in pgd["fractions"]}
    for f, limit, source in PGD_TARGETS:
        if f in by_f:
            row = by_f[f]
            out.append(_target(f"PGD-{pgd['steps']}-{pgd['restarts']} early exit / plain at robust "
                               f"fraction {f:g}", row["ratio"], "<=", limit, source,
                               trusted=row["trusted"], why=row["why"], floor_value=f))
    return out


def _method_rows(t: Timing, methods, precisions) -> dict:
    """method -> label, floor, picked layout and per config its seconds and ratio to the
    standard step of the same precision and layout."""
    out = {}
    for m in methods:
        spec = METHODS[m]
        row = {"label": spec.label, "floor": spec.floor_ratio, "floor_fe": spec.floor,
               "floor_count": spec.count, "floor_exact": spec.exact, "layout": picked_layout(m),
               "configs": {}}
        for p in precisions:
            for lay in LAYOUTS:
                key, base = _key(m, p, lay), _key("standard", p, lay)
                if key not in t.seconds or base not in t.seconds:
                    continue
                s = {f"{k}_s" if k != "spread" else k: v for k, v in t.stats(key).items()}
                r = t.ratio_stats(key, base)
                row["configs"][f"{p}/{lay}"] = {**s, "rounds_s": list(t.seconds[key]),
                                                "ratio": r["ratio"], "ratio_low": r["low"],
                                                "ratio_high": r["high"], "ratio_spread": r["spread"],
                                                "trusted": r["trusted"], "why": r["why"],
                                                "over_floor": r["ratio"] / spec.floor_ratio}
        out[m] = row
    return out


def _layout_rows(t: Timing, precisions) -> dict:
    """Per method timed in both layouts: seconds of each (precision, layout) over fp32 nchw."""
    out = {}
    for m in LAYOUT_METHODS:
        base = _key(m, "fp32", "nchw")
        if base not in t.seconds:
            continue
        out[m] = {f"{p}/{lay}": t.ratio_stats(base, _key(m, p, lay))["ratio"]
                  for p in precisions for lay in LAYOUTS if _key(m, p, lay) in t.seconds}
    return out


@contextlib.contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    torch.set_num_threads(n or free_threads())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def measure(*, methods=tuple(METHODS), precisions=None, model: str = "preact_resnet18",
            width: int = 16, batch: int = 128, warmup: int = 1, rounds: int = 3,
            layout_methods=LAYOUT_METHODS, pgd: dict | None = None, threads: int | None = None,
            device: str = "cpu", seed: int = 0, out: Callable | None = None,
            low_precision: dict | None = None) -> dict:
    """Time one training step of each method (and PGD evaluation) and check the targets.

    Every (method, precision, layout) step is one configuration of a single :func:`timing`
    call (round by round, rotated), so all ratios come from the same rounds of one process.
    Args:
        methods: keys of :data:`METHODS` ('standard' is always added: ratios are to it).
        precisions: 'fp32' / 'bf16'; None: those of :func:`precisions_here`.
        model, width, batch: the network (PreAct ResNet-18 at base width `width`; 'cnn1' for
            tests) and the training batch.
        warmup, rounds: as in :func:`timing`.
        layout_methods: methods also timed in the layout fatlib does not pick.
        pgd: keyword arguments of :func:`pgd_cost` (model and width default to these), or
            None to leave the evaluation out.
        low_precision: keyword arguments of :func:`low_precision_pgd_of_records` (bf16-step
            PGD on trained records), or None to leave it out.
        threads: torch threads (None: :func:`free_threads`); restored afterwards.
        device: 'cpu' or 'cuda'.
        out: print-like function for progress lines, or None.
    Returns:
        the report (JSON-serialisable dict, see :data:`FORMAT`): machine, settings, notes,
        ``steps`` (method -> floor and per config seconds and ratio to standard),
        ``layouts``, ``pgd`` and ``targets`` (each with pass / fail and trusted).
    """
    from fatlib import runs
    from fatlib.devices import resolve_device, resolve_precision

    say = out or (lambda *a: None)
    methods = ["standard"] + [m for m in methods if m != "standard"]
    here, note = precisions_here(device)
    precisions = list(precisions or here)
    notes = [note] if note and "bf16" not in precisions else []
    if "bf16" in precisions and "bf16" not in here:
        notes.append("bf16 timed on a CPU without native bf16 (emulated): expect it to be slow")
    train_precision = resolve_precision("auto", resolve_device(device))
    if train_precision not in precisions:
        train_precision = precisions[0]
    features = cpu_features()
    with _threads(threads) as n_threads:
        configs = step_configs(methods, precisions, layout_methods=layout_methods, model=model,
                               width=width, batch=batch, seed=seed)
        say(f"timing {len(configs)} step configurations: {warmup} warm-up + {rounds} rounds, "
            f"{n_threads} torch thread(s)")
        fns = {k: step_fn(c, fresh_elle=METHODS[k.split("/")[0]].fresh_elle, device=device)
               for k, c in configs.items()}
        start = time.perf_counter()
        t = timing(fns, warmup=warmup, rounds=rounds, rotate=True)
        step_s = time.perf_counter() - start
        pgd_report = None
        if pgd is not None:
            say("timing PGD evaluation")
            pgd_report = pgd_cost(**{"model": model, "width": width, "seed": seed, **pgd})
        lp_report = None
        if low_precision is not None:
            say("timing PGD with bf16 gradient steps on trained records")
            lp_report = low_precision_pgd_of_records(**low_precision)
            if "bf16" not in here:
                notes.append("bf16-step PGD timed on a CPU without native bf16 (emulated)")
    targets = _step_targets(t, train_precision, features["bf16"], width, device)
    targets += _pgd_targets(pgd_report) if pgd_report else []
    targets += _low_precision_targets(lp_report) if lp_report else []
    return {"format": FORMAT, "machine": {**runs.machine(), **features}, "torch": torch.__version__,
            "threads": n_threads, "device": device, "load_average": _load(),
            "settings": {"model": model, "width": width, "batch": batch, "warmup": warmup,
                         "rounds": rounds, "seed": seed, "precisions": precisions,
                         "training_precision": train_precision, "picked_layout": PICKED_LAYOUT,
                         "max_spread": t.max_spread, "min_rounds": t.min_rounds},
            "notes": notes,
            "steps": _method_rows(t, methods, precisions), "layouts": _layout_rows(t, precisions),
            "pgd": pgd_report, "low_precision_pgd": lp_report, "targets": targets,
            "seconds": {"steps": step_s}}


def _load() -> list | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- tables

def step_rows(report: dict) -> list:
    """Rows of a table of the report's steps: method, precision / layout, ms, ratio to a
    standard step, the per-round range (flagged when not to be trusted), floor, ratio / floor."""
    rows = []
    for row in report["steps"].values():
        for cfg, c in row["configs"].items():
            rng = f"{c['ratio_low']:.2f}-{c['ratio_high']:.2f}"
            rows.append({"method": row["label"], "precision / layout": cfg,
                         "ms per step": f"{1000 * c['median_s']:.1f}",
                         "/ standard": f"{c['ratio']:.2f}",
                         "per-round range": rng if c["trusted"] else f"{rng}: not to be trusted",
                         "floor": f"{row['floor']:.2f}" + ("" if row["floor_exact"] else " (est.)"),
                         "/ floor": f"{c['over_floor']:.2f}"})
    return rows


def target_rows(report: dict) -> list:
    """Rows of a table of the report's targets: ratio, target, its floor, pass / fail."""
    return [{"ratio": t["name"], "measured": "-" if t["value"] is None else f"{t['value']:.2f}",
             "target": f"{t['op']} {t['limit']:g}",
             "floor": "" if t["floor"] is None else f"{t['floor']:.2f}",
             "meets it": {None: "not measured", True: "yes", False: "no"}[t["pass"]],
             "trusted": "" if t["trusted"] in (True, None) else f"no: {t['why']}",
             "source": t["source"]} for t in report["targets"]]


# --------------------------------------------------------------------------- verdict rows

def verdict_rows(report: dict, scale: str) -> list:
    """The closing-table rows of the cost chapter: one per target of the report.

    A target checked here is a bound rule (``verdicts.within``) on the measured ratio; one
    not measured on this machine (bf16 without native bf16) is a not-run row.
    Args:
        report: the dict of :func:`measure`.
        scale: '<kind>: <what>' naming the settings.
    Returns:
        list of fatlib.verdicts.Verdict.
    """
    from fatlib import verdicts

    rows = []
    for tg in report["targets"]:
        claim = f"{tg['name']} {tg['op']} {tg['limit']:g}"
        if tg["value"] is None:
            rows.append(verdicts.not_run("fatlib performance target", claim, paper=tg["source"],
                                         need="a CPU with native bf16 (AVX-512-BF16 or AMX)"))
            continue
        bound = {"hi": tg["limit"]} if tg["op"] == "<=" else {"lo": tg["limit"]}
        trust = "trusted" if tg["trusted"] else f"not trusted: {tg['why']}"
        rule = verdicts.within([tg["value"]], name=f"ratio ({trust})", digits=2, **bound)
        rows.append(verdicts.check("fatlib performance target", claim, rule, paper=tg["source"],
                                   scale=scale, reason=_reason(tg)))
    return rows


def _reason(tg: dict) -> str:
    if tg["floor"] is not None and (tg["op"] == "<=" and tg["floor"] > tg["limit"]):
        return (f"the target is below this ratio's floor ({tg['floor']:.2f} in "
                f"forward-equivalents)")
    if not tg["trusted"]:
        return f"the spread of the timed rounds on this shared CPU ({tg['why']})"
    return "this CPU, width and batch: the steps spend their time elsewhere than the count says"


# --------------------------------------------------------------------------- command line

def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m fatlib bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the report as JSON to FILE (no FILE: to stdout, tables to stderr)")
    p.add_argument("--quick", action="store_true",
                   help="smoke size: width 4, batch 8, 1 warm-up + 2 rounds, PGD-3-2 on 8 images")
    p.add_argument("--paper", action="store_true",
                   help="the paper's width 64 and 5 rounds (long on a CPU: ~minutes a round)")
    p.add_argument("--parts", nargs="+", choices=("steps", "pgd", "lowp"), default=["steps", "pgd"],
                   help="lowp (not by default): PGD-50-10 with bf16 gradient steps against fp32 "
                        "on three trained records (--lowp-n test images; long without native bf16)")
    p.add_argument("--lowp-n", type=int, default=LOW_PRECISION_N,
                   help=f"test images of the lowp part (the rule judges {LOW_PRECISION_N:,})")
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="default: fp32, and bf16 where native (or CUDA)")
    p.add_argument("--all-layouts", action="store_true",
                   help="time every method in both layouts (default: standard, FGSM-RS and "
                        "GradAlign in both, the others in fatlib's)")
    p.add_argument("--model", default="preact_resnet18", help="preact_resnet18 or cnn1 (tests)")
    p.add_argument("--width", type=int, default=None, help="PreAct ResNet-18 base width "
                   "(default 16, the record scale; the paper: 64)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (paper: 128)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 1)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
    p.add_argument("--pgd-n", type=int, default=None, help="examples attacked by PGD (20)")
    p.add_argument("--pgd-steps", type=int, default=None, help="PGD steps (50)")
    p.add_argument("--pgd-restarts", type=int, default=None, help="PGD restarts (10)")
    p.add_argument("--pgd-rounds", type=int, default=1, help="timed rounds of the PGD table")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.25, 0.45, 0.5, 0.75, 1.0])
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores the load average leaves free)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    size = (dict(width=8, batch_size=8, warmup=1, rounds=2, pgd_n=8, pgd_steps=3, pgd_restarts=2)
            if a.quick else dict(width=64, batch_size=128, warmup=2, rounds=5, pgd_n=20,
                                 pgd_steps=50, pgd_restarts=10)
            if a.paper else dict(width=16, batch_size=128, warmup=1, rounds=3, pgd_n=20,
                                 pgd_steps=50, pgd_restarts=10))
    for k, v in size.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def report_text(report: dict) -> str:
    """The report as the tables the command prints."""
    s, m = report["settings"], report["machine"]
    lines = [f"fatlib bench on {m['cpu']} ({m['cores']} cores, bf16: {m['bf16'] or 'not native'}),"
             f" torch {report['torch']}, {report['threads']} thread(s), load average "
             f"{report['load_average']}",
             f"{s['model']} width {s['width']}, batch {s['batch']}, {s['warmup']} warm-up + "
             f"{s['rounds']} rounds interleaved; ratios to a standard step of the same precision "
             f"and layout; * = not trusted (spread > {s['max_spread']:.0%} or < {s['min_rounds']} "
             f"rounds)"]
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append(f"\n{'method':<28}{'config':<20}{'ms':>9}{'ratio':>8}{'floor':>7}{'/floor':>8}")
    for row in report["steps"].values():
        for cfg, c in row["configs"].items():
            star = "" if c["trusted"] else "*"
            lines.append(f"{row['label']:<28}{cfg:<20}{1000 * c['median_s']:9.1f}"
                         f"{c['ratio']:7.2f}{star:1}{row['floor']:7.2f}{c['over_floor']:8.2f}")
    if report["pgd"]:
        g = report["pgd"]
        lines.append(f"\nPGD-{g['steps']}-{g['restarts']} on {g['n']} images, fp32 eval: plain "
                     f"{g['plain_s']:.2f} s; robust fraction -> early exit / plain")
        lines += [f"  {r['fraction']:5.2f} (measured {r['measured']:.2f}): {r['ratio']:.2f}"
                  f"{'' if r['trusted'] else '*'}" for r in g["fractions"]]
    if report.get("low_precision_pgd"):
        lp = report["low_precision_pgd"]
        accepted = {None: "not judged", True: "yes", False: "no"}[lp["accepted"]]
        lines.append(f"\nPGD-{lp['steps']}-{lp['restarts']} on {lp['n']} test images, bf16 gradient "
                     f"steps (scored in fp32) against fp32: accepted {accepted}"
                     + (f" ({lp['why']})" if lp["why"] else ""))
        lines += [f"  {r['model']}: fp32 {r['fp32_acc']:.1f}%, bf16 {r['bf16_acc']:.1f}% "
                  f"({r['gap']:+.1f}), fp32 / bf16 time {r['speedup']:.2f}" for r in lp["rows"]]
    lines.append("\ntargets:")
    for tg in report["targets"]:
        verdict = "n/a " if tg["pass"] is None else "PASS" if tg["pass"] else "FAIL"
        value = "-" if tg["value"] is None else f"{tg['value']:.2f}"
        trust = "" if tg["trusted"] in (True, None) else f"  (not trusted: {tg['why']})"
        lines.append(f"  {verdict} {tg['name']} = {value} (target {tg['op']} {tg['limit']:g})"
                     f"{trust}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the benchmark, print its tables (and write --json); returns 0."""
    a = _parse(argv)
    text_out = sys.stderr if a.json == "-" else sys.stdout
    pgd = (dict(n=a.pgd_n, steps=a.pgd_steps, restarts=a.pgd_restarts, fractions=a.fractions,
                rounds=a.pgd_rounds) if "pgd" in a.parts else None)
    methods = a.methods if "steps" in a.parts else ["standard"]
    report = measure(methods=methods, precisions=a.precisions, model=a.model, width=a.width,
                     batch=a.batch_size, warmup=a.warmup, rounds=a.rounds,
                     layout_methods=tuple(METHODS) if a.all_layouts else LAYOUT_METHODS,
                     pgd=pgd, threads=a.threads, device=a.device, seed=a.seed,
                     low_precision=(dict(n=a.lowp_n, steps=a.pgd_steps, restarts=a.pgd_restarts)
                                    if "lowp" in a.parts else None),
                     out=lambda line: print(line, file=text_out, flush=True))
    print(report_text(report), file=text_out)
    if a.json == "-":
        json.dump(report, sys.stdout, indent=1)
        print()
    elif a.json:
        Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {a.json}", file=text_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
