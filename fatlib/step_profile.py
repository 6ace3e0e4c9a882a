"""Where a training step's time goes: its operators grouped by kind, the arithmetic the step
does, and the rate a plain matrix product reaches on the same CPU.

The cost board asks how fast a 2-core CPU can train a robust CIFAR-10 model; when it cannot
reach the target, this module says what limits it.

1. :func:`op_breakdown` runs a few steps of the training loop's own step (``bench.step_fn``)
   under ``torch.profiler`` and sums each operator's *self* time into :data:`KINDS`
   (convolutions forward and backward, batch norm, ReLU, the linear layer, memory, the
   rest), per step.
2. :func:`forward_flops` counts the floating-point operations of one forward pass of the
   convolutions and linear layers (2 per multiply-add) with forward hooks; a step does its
   floor's number of forward-equivalents of them (``bench.METHODS[m].floor``: a standard
   step 3, FGSM 5).
3. :func:`node_breakdown` sums the same self times by the autograd node whose backward ran
   them, which separates double backprop (GradAlign's '...BackwardBackward0' nodes) from the
   ordinary backward passes.
4. :func:`matmul_rate` is the GFLOP/s of a large square matrix product in a precision: what
   this CPU's arithmetic units deliver when memory does not limit them.
5. :func:`limits` puts them together for one method: the step's seconds (unprofiled, from
   ``bench.timing``), the share of each kind, and the step's arithmetic rate against the
   matrix product's.
6. :func:`compile_gain` measures one lever against those limits: the same step with the
   network under ``torch.compile``, which fuses element-wise operators.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import torch
from torch import nn

from fatlib import bench

# (kind, substrings of an operator's lower-cased name), first match wins; the rest: OTHER
KINDS = (
    ("convolution, backward", ("convolution_backward", "convolutionbackward", "conv2d_backward",
                               "conv_depthwise2d_backward")),
    ("convolution, forward", ("conv",)),
    ("batch norm", ("batch_norm", "batchnorm")),
    ("ReLU", ("relu", "clamp_min", "threshold_backward")),
    ("linear layer", ("addmm", "aten::mm", "aten::linear", "aten::t")),
    ("memory (allocation, copies, casts)", ("aten::empty", "aten::zeros", "copy", "aten::to",
                                            "aten::clone", "aten::contiguous", "aten::resize_",
                                            "aten::ones", "aten::fill_", "aten::zero_")),
)
OTHER = "other element-wise (additions, the attack's sign and clamp, the optimizer)"


def kind_of(op_name: str) -> str:
    """The kind (:data:`KINDS`, else :data:`OTHER`) of a profiler event's name."""
    name = op_name.lower()
    for kind, parts in KINDS:
        if any(_matches(name, part) for part in parts):
            return kind
    return OTHER


def _matches(name: str, part: str) -> bool:
    """A part 'aten::op' matches that operator and its variants ('aten::empty' matches
    'aten::empty_strided', 'aten::to' does not match 'aten::topk'); any other part is a
    substring."""
    if part.startswith("aten::"):
        return name == part or name.startswith(part + "_") or name.startswith(part + ".")
    return part in name


def _profiled(step, steps: int):
    """torch.profiler's record of `steps` calls of `step` (CPU activity)."""
    if steps < 1:
        raise ValueError(f"profiling needs steps >= 1; got {steps}")
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof


def op_breakdown(step, *, steps: int = 3) -> dict:
    """Seconds per step of each kind of operator, by torch.profiler's self times.

    Args:
        step: a function of no arguments that runs one training step (:func:`training_step`);
            call it once before, so that first-call costs are not profiled.
        steps: steps profiled.
    Returns:
        kind -> seconds per step (every kind of :data:`KINDS` and :data:`OTHER`, zeros
        included), in that order.
    Raises:
        ValueError: steps < 1.
    """
    kinds = dict.fromkeys([k for k, _ in KINDS] + [OTHER], 0.0)
    for event in _profiled(step, steps).key_averages():
        kinds[kind_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    return kinds


ENGINE = "autograd::engine::evaluate_function: "
OUTSIDE = "outside the backward passes (forward passes, the attack's steps, the optimizer)"


def node_of(event) -> str:
    """The autograd node (e.g. 'NativeBatchNormBackwardBackward0') whose evaluation ran a
    profiler event, or :data:`OUTSIDE`."""
    while event is not None:
        if event.name.startswith(ENGINE):
            return event.name[len(ENGINE):]
        event = event.cpu_parent
    return OUTSIDE


def node_breakdown(step, *, steps: int = 3) -> dict:
    """Seconds per step by the autograd node whose backward ran each operator (self times),
    largest first; a node named '...BackwardBackward0' differentiates a backward pass
    (double backprop).

    Args, Raises: as :func:`op_breakdown`.
    """
    nodes: dict = {}
    for event in _profiled(step, steps).events():
        node = node_of(event)
        nodes[node] = nodes.get(node, 0.0) + event.self_cpu_time_total / 1e6 / steps
    return dict(sorted(nodes.items(), key=lambda kv: -kv[1]))


def node_rows(nodes: dict, *, top: int = 8) -> list:
    """The `top` largest nodes of :func:`node_breakdown` (ms per step, share), the rest summed."""
    total = sum(nodes.values())
    items = list(nodes.items())
    rest = sum(v for _, v in items[top:])
    items = items[:top] + ([(f"{len(nodes) - top} other nodes", rest)] if len(nodes) > top else [])
    return [{"autograd node": name, "ms per step": f"{1000 * v:.1f}",
             "share": f"{100 * v / total:.0f}%"} for name, v in items]


def double_backward_share(nodes: dict) -> float:
    """The share of :func:`node_breakdown`'s time in nodes that differentiate a backward pass."""
    return sum(v for k, v in nodes.items() if "BackwardBackward" in k) / sum(nodes.values())


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for a while: the profiler's C++ library logs its
    stages there (and, without a GPU, an error about the GPU count) whatever the log level."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def forward_flops(model: nn.Module, x: torch.Tensor) -> dict:
    """Floating-point operations of one forward pass of the convolutions and linear layers
    (2 per multiply-add; batch norm, ReLU and additions left out), for the batch `x`.

    The model runs once in eval mode without gradients (its mode and buffers are left as
    they were).
    Returns:
        {"conv": flops, "linear": flops, "total": flops, "per_image": total / len(x)}.
    """
    counts = {"conv": 0, "linear": 0}

    def conv_hook(module, _inputs, out):
        k = module.kernel_size[0] * module.kernel_size[1]
        counts["conv"] += 2 * out.numel() * (module.in_channels // module.groups) * k

    def linear_hook(module, _inputs, out):
        counts["linear"] += 2 * out.numel() * module.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules()
              if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    total = counts["conv"] + counts["linear"]
    return {**counts, "total": total, "per_image": total / len(x)}


def matmul_rate(precision: str = "fp32", *, n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of an n x n by n x n matrix product on the CPU in 'fp32' or 'bf16' (the
    median of `rounds` timed products after one untimed one)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {sorted(dtypes)}; got {precision!r}")
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtypes[precision]) for _ in range(2))
    seconds = bench.median_seconds({"mm": lambda: torch.mm(a, b)}, warmup=1, rounds=rounds)["mm"]
    return 2 * n ** 3 / seconds / 1e9


def training_step(method: str, *, precision: str, width: int = 16, batch: int = 128,
                  model: str = "preact_resnet18", compiled: bool = False):
    """One training step of `method` as the loop runs it (``bench.step_fn``) in fatlib's
    layout for it, already called once (first-call costs paid: with compiled, the
    compilation); its ``first_call_s`` attribute is that first call's wall time."""
    config = bench.step_config(method, precision=precision, layout=bench.picked_layout(method),
                               model=model, width=width, batch=batch)
    step = bench.step_fn(config, fresh_elle=bench.METHODS[method].fresh_elle, compiled=compiled)
    start = time.perf_counter()
    step()
    step.first_call_s = time.perf_counter() - start
    return step


def limits(method: str, *, precision: str, width: int = 16, batch: int = 128,
           model: str = "preact_resnet18", steps: int = 3, rounds: int = 3) -> dict:
    """What limits one training step of `method` on this CPU.

    Args:
        method: a ``bench.METHODS`` key.
        precision: 'fp32' or 'bf16' (bf16 is slow where the CPU emulates it).
        width, batch, model: the step's network and minibatch (``bench.step_config``).
        steps: steps profiled and timed per round; rounds: timed rounds.
    Returns:
        dict: seconds (per step, unprofiled median), kinds (kind -> share of the profiled
        time), gflop (the step's floor times the forward arithmetic), gflops (its rate),
        matmul_gflops (the matrix product's rate in the same precision), fraction (of it),
        layout and threads.
    """
    step = training_step(method, precision=precision, width=width, batch=batch, model=model)
    seconds = bench.median_seconds({"step": lambda: sum(step() for _ in range(steps)) / steps},
                                   warmup=0, rounds=rounds)["step"]
    kinds = op_breakdown(step, steps=steps)
    total = sum(kinds.values())
    run = step.run
    flops = forward_flops(run.model, run._to_device(torch.zeros(batch, *run.images.shape[1:])))
    gflop = bench.METHODS[method].floor * flops["total"] / 1e9
    rate = matmul_rate(precision)
    return {"method": method, "precision": precision, "layout": bench.picked_layout(method),
            "width": width, "batch": batch, "threads": torch.get_num_threads(), "seconds": seconds,
            "kinds": {k: v / total for k, v in kinds.items()}, "gflop": gflop,
            "gflops": gflop / seconds, "matmul_gflops": rate, "fraction": gflop / seconds / rate}


def training_hours(seconds_per_step: float, *, epochs: int, n_train: int = 50_000,
                   batch: int = 128) -> float:
    """Hours of `epochs` epochs of `n_train` images at `seconds_per_step` a minibatch of
    `batch` (the last, smaller minibatch counted as a whole one)."""
    return epochs * -(-n_train // batch) * seconds_per_step / 3600


def limits_rows(results: dict) -> list:
    """A table of :func:`limits` results side by side: one row per kind of operator (its
    share of the step, %) and per rate, one column per result (results: label -> limits)."""
    first = next(iter(results.values()))
    rows = [{"": kind, **{label: f"{100 * r['kinds'][kind]:.0f}%" for label, r in results.items()}}
            for kind in first["kinds"]]
    measures = (("seconds per step", lambda r: f"{r['seconds']:.3f}"),
                ("GFLOP per step (floor x forward)", lambda r: f"{r['gflop']:.1f}"),
                ("GFLOP/s of the step", lambda r: f"{r['gflops']:.0f}"),
                (f"GFLOP/s of a {first['precision']} matrix product",
                 lambda r: f"{r['matmul_gflops']:.0f}"),
                ("step / matrix product", lambda r: f"{100 * r['fraction']:.0f}%"))
    return rows + [{"": name, **{label: fmt(r) for label, r in results.items()}}
                   for name, fmt in measures]


@contextlib.contextmanager
def _logger_quiet(name: str):
    """Raise a logger's level to ERROR for a while."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def compile_gain(method: str, *, precision: str, width: int = 16, batch: int = 128,
                 model: str = "preact_resnet18", steps: int = 2, rounds: int = 3) -> dict:
    """What ``torch.compile`` of the network changes in one training step of `method`.

    Two steps from the same seed (the same initial weights and minibatch), one eager and one
    compiled, take one step each; then both are timed round by round (``bench.timing``).
    Returns:
        dict: eager_s and compiled_s (median seconds per step), ratio (compiled / eager, below
        1 is faster) and its trusted flag, compile_s (the compiled step's first call),
        weight_diff (the largest absolute difference between the two networks' weights after
        their first step), or {"error": why} when torch.compile fails here (it needs a C++
        compiler on a CPU).
    """
    kw = dict(precision=precision, width=width, batch=batch, model=model)
    eager = training_step(method, **kw)
    try:
        with _logger_quiet("torch.utils.cpp_extension"):  # "No CUDA runtime is found" on a CPU
            compiled = training_step(method, compiled=True, **kw)
    except Exception as e:  # noqa: BLE001 - any compiler failure is reported, not raised
        return {"error": f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0]}"}
    weight_diff = max((a - b).abs().max().item() for a, b in
                      zip(eager.run.model.parameters(), compiled.run.model.parameters()))
    t = bench.timing({name: (lambda f=f: sum(f() for _ in range(steps)) / steps)
                      for name, f in (("eager", eager), ("compiled", compiled))},
                     baseline="eager", warmup=0, rounds=rounds, rotate=True)
    return {"method": method, "precision": precision, "width": width,
            "eager_s": t.median["eager"], "compiled_s": t.median["compiled"],
            "ratio": t.ratio("compiled"), "trusted": t.ratio_stats("compiled")["trusted"],
            "compile_s": compiled.first_call_s, "weight_diff": weight_diff}


def compile_rows(gains: dict) -> list:
    """A table of :func:`compile_gain` results (label -> result), one row each."""
    rows = []
    for label, g in gains.items():
        if "error" in g:
            rows.append({"network": label, "compiled / eager": g["error"]})
            continue
        rows.append({"network": label, "eager (s/step)": f"{g['eager_s']:.3f}",
                     "compiled (s/step)": f"{g['compiled_s']:.3f}",
                     "compiled / eager": f"{g['ratio']:.2f}" + ("" if g["trusted"] else
                                                                " (spread too wide to trust)"),
                     "first compiled step (s)": f"{g['compile_s']:.0f}",
                     "largest weight difference after one step": f"{g['weight_diff']:.1e}"})
    return rows
