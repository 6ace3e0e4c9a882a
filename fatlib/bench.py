"""Benchmark: the DESIGN.md performance ratios, measured in one process.

``python -m fatlib bench [--quick] [--parts steps pgd] ...``

1. Training-step costs for PreAct ResNet-18 on CIFAR-shaped data: an FGSM-RS step
   (input-only gradient attack + a parameter update on x + delta) over a standard step,
   both in the training precision 'auto' resolves to (bf16 autocast on a CPU with native
   bf16, else fp32) + channels_last (target <= 1.8); a GradAlign step (FGSM + GradAlign,
   double backprop) over an FGSM-RS step, in NCHW and in channels_last (target <= 3),
   reusing FGSM's gradient at x, and once (NCHW) recomputing it as the authors' code does;
   and the bf16 + channels_last speed-up over fp32 NCHW (target >= 2.5; on a CPU without
   native bf16 only the channels_last speed-up is left to measure).
2. Evaluation cost of early-stopping ("fast") PGD-K-R over plain PGD-K-R at several
   robust fractions (target: grows with the robust fraction, <= 1.05 when all robust).

Steps are timed with ``time.perf_counter`` round-robin (one of each kind per round, the
median over rounds), so that a change in machine load hits every kind alike. The
numbers are ratios measured on this machine at this moment: on a shared CPU, other
processes add noise.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fatlib import attacks, regularizers, train
from fatlib.threat import ThreatModel

EPS = 8 / 255
CL = torch.channels_last


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m fatlib bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: batch 8, 1 warm-up + 1 timed round, PGD-3-2 on 8 examples")
    p.add_argument("--parts", nargs="+", choices=("steps", "pgd"), default=["steps", "pgd"])
    p.add_argument("--model", default="preact_resnet18", help="fatlib.models name (CIFAR-10 shape)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (paper: 128)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--no-fp32", action="store_true", help="skip the fp32 NCHW standard step")
    p.add_argument("--pgd-batch", type=int, default=32, help="examples attacked by PGD")
    p.add_argument("--pgd-steps", type=int, default=50)
    p.add_argument("--pgd-restarts", type=int, default=10)
    p.add_argument("--pgd-rounds", type=int, default=1, help="timed rounds of the PGD table")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.warmup, args.rounds = 8, 1, 1
        args.pgd_batch, args.pgd_steps, args.pgd_restarts, args.pgd_rounds = 8, 3, 2, 1
    return args


def median_seconds(fns: dict, *, warmup: int = 1, rounds: int = 3) -> dict:
    """Median seconds per call of each function, timed round-robin in this process.

    The one timing function of the book: every page that reports a cost calls it (directly
    or through :func:`seconds_per_step`). One call of each function per round, so that a
    change in machine load hits all of them alike; the first ``warmup`` rounds are not
    timed (first-call costs: data caches, the allocator, kernel selection).
    Args:
        fns: name -> function of no arguments. A function may return its own measurement in
            seconds (a float, e.g. a training loop's timers without its set-up); otherwise
            its wall time (``time.perf_counter``) is used.
        warmup: untimed rounds.
        rounds: timed rounds (the median over them is reported).
    Returns:
        name -> median seconds.
    Raises:
        ValueError: no functions, or rounds < 1.
    """
    if not fns or rounds < 1:
        raise ValueError(f"median_seconds needs at least one function and rounds >= 1, got "
                         f"{len(fns)} functions and rounds={rounds}")
    times = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            measured = fn()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(float(measured) if isinstance(measured, (int, float))
                                   and not isinstance(measured, bool) else elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def seconds_per_step(configs: dict, *, steps: int = 3, warmup: int = 1, rounds: int = 3) -> dict:
    """Median seconds per optimizer step of each training config, from the loop's own timers.

    Implements: the cost of a training method as the book reports it: ``steps`` steps of
    ``fatlib.train.train`` (attack + parameter update, without data loading, evaluation or
    set-up: the loop's ``time_attack + time_update``), timed round-robin by
    :func:`median_seconds`.
    Args:
        configs: name -> TrainConfig (with at least ``steps`` minibatches of training data).
        steps: optimizer steps per timing.
        warmup, rounds: as in :func:`median_seconds`.
    Returns:
        name -> seconds per step.
    """
    def timed(config):
        def run():
            last = train.train(config.replace(eval_every=steps), max_steps=steps).history[-1]
            return (last["time_attack"] + last["time_update"]) / steps
        return run

    return median_seconds({name: timed(cfg) for name, cfg in configs.items()},
                          warmup=warmup, rounds=rounds)


def _cifar_batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _build(name: str, seed: int) -> nn.Module:
    from fatlib import models

    torch.manual_seed(seed)
    return models.build(name, "cifar10")


# --- 1. training steps ------------------------------------------------------------------------

def _trainer(model: nn.Module, x, y, *, precision: str, channels_last: bool) -> dict:
    """Step closures (standard, FGSM-RS, GradAlign) on a private copy of the model."""
    model = copy.deepcopy(model).train()
    if channels_last:
        model = model.to(memory_format=CL)
        x = x.contiguous(memory_format=CL)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    threat = ThreatModel("linf", EPS)

    def autocast():
        return train.autocast(torch.device("cpu"), precision)

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def standard():
        with autocast():
            loss = F.cross_entropy(model(x), y)
        update(loss)

    def fgsm_rs():
        with autocast():
            delta = attacks.fgsm(model, x, y, threat, alpha=1.25 * EPS, init="random")
            loss = F.cross_entropy(model(x + delta), y)
        update(loss)

    def grad_align(share: bool):
        # FGSM (zero init) + GradAlign; share=True reuses FGSM's gradient at x as GradAlign's
        # first gradient (one forward-backward less); share=False recomputes it (authors' code).
        def step():
            with autocast():
                delta, grad_x = attacks.fgsm_and_gradient(model, x, y, threat)
                loss = F.cross_entropy(model(x + delta), y)
                loss = loss + 0.2 * regularizers.grad_align(model, x, y, EPS,
                                                             grad_at_x=grad_x if share else None)
            update(loss)
        return step

    return {"standard": standard, "fgsm_rs": fgsm_rs, "grad_align": grad_align(True),
            "grad_align_recompute": grad_align(False)}


def bench_steps(args, out=print) -> dict:
    """Time the training steps; returns the ratios."""
    model = _build(args.model, args.seed)
    x, y = _cifar_batch(args.batch_size, args.seed)
    p = train.resolve_precision("auto", torch.device("cpu"))
    cl = _trainer(model, x, y, precision=p, channels_last=True)
    nchw = _trainer(model, x, y, precision=p, channels_last=False)
    fns = {f"standard {p} CL": cl["standard"], f"FGSM-RS {p} CL": cl["fgsm_rs"],
           f"GradAlign {p} CL": cl["grad_align"], f"FGSM-RS {p} NCHW": nchw["fgsm_rs"],
           f"GradAlign {p} NCHW": nchw["grad_align"],
           f"GradAlign* {p} NCHW": nchw["grad_align_recompute"]}
    if not args.no_fp32:
        fns["standard fp32 NCHW"] = _trainer(model, x, y, precision="fp32",
                                             channels_last=False)["standard"]
    out(f"\n[1] training steps: {args.model}, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.rounds} timed rounds (median)")
    if p == "fp32":
        out("  this CPU has no native bf16 (emulated bf16 is many times slower than fp32): "
            "the mixed-precision rows run in fp32")
    t = median_seconds(fns, warmup=args.warmup, rounds=args.rounds)
    for name, sec in t.items():
        out(f"  {name:<22} {1000 * sec:9.1f} ms")
    ratios = {
        f"fgsm_rs/standard ({p} CL)": (t[f"FGSM-RS {p} CL"] / t[f"standard {p} CL"], "<= 1.8"),
        f"grad_align/fgsm_rs ({p} NCHW)": (t[f"GradAlign {p} NCHW"] / t[f"FGSM-RS {p} NCHW"],
                                           "<= 3"),
        f"grad_align/fgsm_rs ({p} CL)": (t[f"GradAlign {p} CL"] / t[f"FGSM-RS {p} CL"], "<= 3"),
        f"grad_align*/fgsm_rs ({p} NCHW)": (t[f"GradAlign* {p} NCHW"] / t[f"FGSM-RS {p} NCHW"],
                                            "<= 3"),
    }
    if "standard fp32 NCHW" in t:
        ratios[f"fp32 NCHW/{p} CL standard"] = (t["standard fp32 NCHW"] / t[f"standard {p} CL"],
                                                ">= 2.5" if p == "bf16" else "channels_last only")
    out("  GradAlign = FGSM + GradAlign reusing FGSM's gradient at x (fgsm_and_gradient);")
    out("  GradAlign* = the same recomputing it (the authors' code)")
    out("  ratios (target):")
    for name, (value, target) in ratios.items():
        out(f"    {name:<33} {value:6.2f}   ({target})")
    return {name: value for name, (value, _) in ratios.items()}


# --- 2. fast vs plain PGD ---------------------------------------------------------------------

def _labels_with_robust_fraction(model, x, fraction: float) -> torch.Tensor:
    """Labels = the model's predictions for the first round(fraction * n) examples (robust
    at a tiny eps), a wrong class for the others (misclassified before any attack)."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    k = round(fraction * len(pred))
    wrong = (pred + 1) % model(x[:1]).shape[1]
    return torch.cat([pred[:k], wrong[k:]])


def bench_pgd(args, out=print) -> dict:
    """Time early-stopping PGD against plain PGD at several robust fractions."""
    model = _build(args.model, args.seed).eval()
    x, _ = _cifar_batch(args.pgd_batch, args.seed + 1)
    threat = ThreatModel("linf", 1e-6)   # too small to break anything: fractions stay exact
    kw = dict(alpha=threat.eps / 4, steps=args.pgd_steps, restarts=args.pgd_restarts)
    labels = {f: _labels_with_robust_fraction(model, x, f) for f in args.fractions}
    robust = {}

    def run(f: float | None) -> Callable[[], None]:
        def go():
            torch.manual_seed(args.seed)
            if f is None:
                attacks.pgd(model, x, labels[max(labels)], threat, early_stop=False, **kw)
            else:
                _, broken = attacks.pgd_search(model, x, labels[f], threat, early_stop=True, **kw)
                robust[f] = 1 - float(broken.float().mean()) if broken is not None else float("nan")
        return go

    attacks.pgd(model, x, labels[max(labels)], threat, alpha=threat.eps, steps=2)  # warm-up
    fns = {"plain": run(None), **{f: run(f) for f in args.fractions}}
    out(f"\n[2] PGD-{args.pgd_steps}-{args.pgd_restarts} evaluation, {args.model} fp32 eval mode, "
        f"{args.pgd_batch} examples, {args.pgd_rounds} timed round(s)")
    t = median_seconds(fns, warmup=0, rounds=args.pgd_rounds)
    out(f"  plain (every example, every step): {t['plain']:.2f} s")
    out("  robust fraction | measured | fast s | fast / plain")
    ratios = {}
    for f in args.fractions:
        ratios[f] = t[f] / t["plain"]
        out(f"  {f:15.2f} | {robust[f]:8.2f} | {t[f]:6.2f} | {ratios[f]:6.2f}")
    out("  (DESIGN.md, a simple implementation: 0.10 / 0.25 / 0.49 / 0.66 / 1.03 at 0 / .25 / .5 / "
        ".75 / 1; target <= 1.05 at 1)")
    return ratios


def main(argv=None) -> int:
    """Run the benchmark and print its tables; returns 0."""
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"fatlib bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs ({platform.machine()}), {_load()}; ratios from one process; "
          f"other processes on a shared CPU add noise (more threads than free cores can make "
          f"every step many times slower: try --threads 1)")
    start = time.perf_counter()
    if "steps" in args.parts:
        bench_steps(args)
    if "pgd" in args.parts:
        bench_pgd(args)
    print(f"\ndone in {time.perf_counter() - start:.0f} s, {_load()}")
    return 0


def _load() -> str:
    try:
        return "load average %.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        return "load average unknown"


if __name__ == "__main__":
    raise SystemExit(main())
