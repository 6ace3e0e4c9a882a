"""Exact l-inf robustness verification of small ReLU networks by mixed-integer linear programming.

Implements: wong2020 §5.1 / Table 2 ("Verified" column), following Tjeng et al. (2017):
a ReLU network is a chain of affine maps (convolutions, linear layers, flatten, normalise)
and ReLUs. Over the input set ``{x' : ||x' - x||_inf <= eps} ∩ [0, 1]^d`` every ReLU gets
pre-activation bounds ``[l, u]``, from interval arithmetic (``bounds='interval'``) or from
interval arithmetic intersected with back-substitution through linear ReLU relaxations
(``bounds='linear'``, the default: CROWN/DeepPoly-style, sound and much tighter after the
first layer, so far fewer ReLUs need a binary). A ReLU with ``l >= 0`` is the
identity, one with ``u <= 0`` is zero, and an unstable one (``l < 0 < u``) is encoded exactly
with one binary ``s`` (big-M with M = the bounds):

    a >= z,  a >= 0,  a <= u * s,  a <= z - l * (1 - s),  s in {0, 1}.

The point is verified robust when, for every wrong class j, the MILP

    find x' in the set with logit_y(x') - logit_j(x') <= 0

is infeasible (its minimum margin is > 0). A feasible solution is a counterexample, and it is
re-checked with a float64 forward pass of the network. Each point has a time budget, split
over its wrong classes; a point whose budget runs out is reported as "timed out" (neither
verified nor refuted). The MILPs are solved by HiGHS through ``scipy.optimize.milp``.

Only nn.Sequential models (possibly nested) built from Conv2d, Linear, Flatten, ReLU,
fatlib.models.Normalize, Identity and Dropout (eval) are supported: that covers
``fatlib.models.build('mnist_net', 'mnist')``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

STATUSES = ("verified", "not verified", "timed out")

_AFFINE = (nn.Conv2d, nn.Linear, nn.Flatten, nn.Identity, nn.Dropout)


@dataclass
class AffineLayer:
    """One affine map z = W a + b between ReLUs, on flattened activations.

    Attributes:
        weight: scipy.sparse CSR matrix [out, in] (float64).
        bias: numpy array [out] (float64).
    """

    weight: sp.csr_matrix
    bias: np.ndarray


@dataclass
class Verification:
    """The verdict for one point.

    Attributes:
        status: 'verified', 'not verified' or 'timed out' (see STATUSES).
        reason: how the verdict was reached: 'interval bounds' / 'linear bounds' (the bounds
            alone prove every margin > 0), 'milp', 'misclassified', 'counterexample (attack)',
            'counterexample (milp)', 'min margin within 1e-4 of 0', 'time limit'.
        seconds: wall time spent on the point.
        unstable: number of unstable ReLUs (binaries in the MILP) at this point and eps.
        counterexample: an input [C, H, W] in the threat set with margin <= 0 for some wrong
            class (checked in float64; a MILP counterexample is float64 and may sit on the
            decision boundary, so rounding it to float32 can tie), when found; else None.
        classes: per wrong class j: 'bounds' (ruled out by the bounds), 'infeasible' (by the
            MILP), 'counterexample', 'boundary' or 'timed out'.
    """

    status: str
    reason: str
    seconds: float
    unstable: int = 0
    counterexample: torch.Tensor | None = None
    classes: dict = field(default_factory=dict)


def _module_sequence(model: nn.Module) -> list[nn.Module]:
    """Flatten nested nn.Sequential containers into the list of their leaf modules."""
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _module_sequence(child)]
    return [model]


def _is_affine(module: nn.Module) -> bool:
    from fatlib.models import Normalize  # lazy: no work at import

    return isinstance(module, _AFFINE + (Normalize,))


@torch.no_grad()
def _affine_matrix(modules: list[nn.Module], in_shape: tuple) -> tuple[AffineLayer, tuple]:
    """The matrix form of a chain of affine modules, by applying it to the identity basis."""
    n_in = int(np.prod(in_shape))
    f = nn.Sequential(*modules).double()
    b = f(torch.zeros(1, *in_shape, dtype=torch.float64))
    out_shape = tuple(b.shape[1:])
    b = b.reshape(-1)
    cols = []
    for start in range(0, n_in, 1024):  # chunks of the identity keep memory small
        rows = min(1024, n_in - start)
        eye = torch.zeros(rows, n_in, dtype=torch.float64)
        eye[torch.arange(rows), torch.arange(start, start + rows)] = 1.0
        out = f(eye.reshape(-1, *in_shape)).reshape(rows, -1) - b
        cols.append(sp.csr_matrix(out.numpy().T))
    weight = sp.hstack(cols, format="csr")
    weight.eliminate_zeros()
    return AffineLayer(weight, b.numpy().copy()), out_shape


def affine_layers(model: nn.Module, input_shape: tuple) -> list[AffineLayer]:
    """Split a ReLU network into its affine maps: logits = A_K relu(... relu(A_1 x)).

    Args:
        model: nn.Sequential of Conv2d / Linear / Flatten / Normalize / ReLU (nested allowed).
        input_shape: (C, H, W) of one input.
    Returns:
        list of AffineLayer, one more than the number of ReLUs; the last maps to the logits.
    Raises:
        ValueError: for a module that is neither affine nor ReLU, or a model ending in a ReLU.
    """
    groups, current = [], []
    for module in _module_sequence(model):
        if isinstance(module, nn.ReLU):
            groups.append(current)
            current = []
        elif _is_affine(module):
            current.append(module)
        else:
            raise ValueError(f"verify supports Conv2d/Linear/Flatten/Normalize/ReLU chains only; "
                             f"found {type(module).__name__}. Use a model like "
                             f"fatlib.models.build('mnist_net', 'mnist').")
    groups.append(current)
    if not groups[-1]:
        raise ValueError("the model ends with a ReLU; verification needs logits from an affine layer")
    layers, shape = [], tuple(input_shape)
    for group in groups:  # float64 copies in eval mode: the caller's model is not touched
        layer, shape = _affine_matrix([_DoubleCopy(m) for m in group] or [nn.Identity()], shape)
        layers.append(layer)
    return layers


class _DoubleCopy(nn.Module):
    """Runs a module in float64 without changing the caller's module (a deep copy)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(module).cpu().double().eval()

    def forward(self, x):
        return self.inner(x)


def input_box(x: torch.Tensor, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The l-inf ball around x intersected with [0, 1], as flat lower and upper bounds.

    Args:
        x: one image in [0, 1], [C, H, W].
        eps: radius in pixel units.
    Returns:
        (lower, upper), float64 arrays [C*H*W].
    """
    flat = x.detach().double().cpu().reshape(-1).numpy()
    return np.clip(flat - eps, 0.0, 1.0), np.clip(flat + eps, 0.0, 1.0)


def _interval(layer: AffineLayer, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of W a + b over the box lo <= a <= hi (interval arithmetic)."""
    w_pos = layer.weight.maximum(0)
    w_neg = layer.weight.minimum(0)
    return (w_pos @ lo + w_neg @ hi + layer.bias, w_pos @ hi + w_neg @ lo + layer.bias)


def interval_bounds(layers: list[AffineLayer], lo: np.ndarray, hi: np.ndarray) -> list[tuple]:
    """Pre-activation bounds of every ReLU layer by interval arithmetic.

    Args:
        layers: from affine_layers.
        lo, hi: input bounds (from input_box).
    Returns:
        list of (l, u) arrays, one per hidden (ReLU) layer.
    """
    bounds = []
    for layer in layers[:-1]:
        l, u = _interval(layer, lo, hi)
        bounds.append((l, u))
        lo, hi = np.maximum(l, 0.0), np.maximum(u, 0.0)
    return bounds


def _relaxation(l: np.ndarray, u: np.ndarray):
    """Linear bounds of relu(z) on [l, u]: lower slope, upper slope and upper intercept.

    Stable on: relu(z) = z; stable off: relu(z) = 0; unstable: relu(z) <= s (z - l) with
    s = u / (u - l), and relu(z) >= lam z with lam = 1 if u >= -l else 0 (the CROWN choice).
    """
    on, unstable = l >= 0, (l < 0) & (u > 0)
    s = np.where(on, 1.0, 0.0)
    s[unstable] = u[unstable] / (u[unstable] - l[unstable])
    intercept = np.zeros_like(l)
    intercept[unstable] = -s[unstable] * l[unstable]
    lam = np.where(on, 1.0, 0.0)
    lam[unstable] = (u[unstable] >= -l[unstable]).astype(float)
    return lam, s, intercept


def _backward_bound(coeff, const, layers, bounds, lo, hi, lower: bool) -> np.ndarray:
    """Bound of coeff @ a_K + const over the input box, back through the relaxed ReLUs.

    coeff multiplies the activations after the last ReLU in ``bounds``; ``layers`` are the
    affine maps before it (len(layers) == len(bounds)). lower=True gives a lower bound.
    """
    coeff = sp.csr_matrix(coeff)
    const = np.array(const, dtype=np.float64)
    for layer, (l, u) in zip(reversed(layers), reversed(bounds)):
        lam, slope, intercept = _relaxation(l, u)
        pos, neg = coeff.maximum(0), coeff.minimum(0)
        # lower bound: positive coefficients take relu's lower line, negative its upper line
        low_side, high_side = (pos, neg) if lower else (neg, pos)
        d = low_side @ sp.diags(lam) + high_side @ sp.diags(slope)
        const = const + high_side @ intercept
        const = const + d @ layer.bias
        coeff = sp.csr_matrix(d @ layer.weight)
    pos, neg = coeff.maximum(0), coeff.minimum(0)
    if lower:
        return const + pos @ lo + neg @ hi
    return const + pos @ hi + neg @ lo


def linear_bounds(layers: list[AffineLayer], lo: np.ndarray, hi: np.ndarray) -> list[tuple]:
    """Pre-activation bounds of every ReLU layer by back-substitution through linear ReLU
    relaxations (CROWN / DeepPoly style), intersected with interval arithmetic.

    Sound (never narrower than the true range) and much tighter than interval arithmetic
    after the first layer, which is exact in both.
    Args:
        layers: from affine_layers.
        lo, hi: input bounds (from input_box).
    Returns:
        list of (l, u) arrays, one per hidden (ReLU) layer.
    """
    bounds = []
    for k, layer in enumerate(layers[:-1]):
        prev_lo = lo if k == 0 else np.maximum(bounds[-1][0], 0.0)
        prev_hi = hi if k == 0 else np.maximum(bounds[-1][1], 0.0)
        l, u = _interval(layer, prev_lo, prev_hi)
        if k > 0:
            l = np.maximum(l, _backward_bound(layer.weight, layer.bias, layers[:k], bounds,
                                              lo, hi, lower=True))
            u = np.minimum(u, _backward_bound(layer.weight, layer.bias, layers[:k], bounds,
                                              lo, hi, lower=False))
        bounds.append((l, u))
    return bounds


BOUNDS = {"interval": interval_bounds, "linear": linear_bounds}


def _margin_layer(last: AffineLayer, y: int, j: int) -> AffineLayer:
    """The affine map a -> logit_y - logit_j of the last hidden activations."""
    w = last.weight.getrow(y) - last.weight.getrow(j)
    return AffineLayer(sp.csr_matrix(w), np.array([last.bias[y] - last.bias[j]]))


class _Program:
    """The MILP constraints shared by every wrong class of one point (variables and rows)."""

    def __init__(self, layers, bounds, lo, hi):
        var_lo, var_hi, integrality = [lo], [hi], [np.zeros(lo.size)]
        rows, rlo, rhi = [], [], []
        offset_prev, size_prev = 0, lo.size
        offset = lo.size
        self.unstable = 0
        for layer, (l, u) in zip(layers[:-1], bounds):
            n = l.size
            active, unstable = l >= 0, (l < 0) & (u > 0)
            k = int(unstable.sum())
            self.unstable += k
            a_lo, a_hi = np.zeros(n), np.maximum(u, 0.0)
            var_lo += [a_lo, np.zeros(k)]
            var_hi += [a_hi, np.ones(k)]
            integrality += [np.zeros(n), np.ones(k)]
            total_new = n + k
            width = offset + total_new
            w = layer.weight
            b = layer.bias

            def block(w_prev, coeff_a, coeff_s, idx, k=k, n=n, offset=offset,
                      offset_prev=offset_prev, size_prev=size_prev):
                """Rows [w_prev | coeff_a on a[idx] | coeff_s on s] placed at the right columns."""
                m = len(idx)
                left = sp.csr_matrix((m, offset_prev))
                mid = sp.csr_matrix((m, offset - offset_prev - size_prev))
                a_part = sp.csr_matrix((coeff_a, (np.arange(m), idx)), shape=(m, n))
                s_part = coeff_s if coeff_s is not None else sp.csr_matrix((m, k))
                return sp.hstack([left, w_prev, mid, a_part, s_part], format="csr")

            # active (stable on): a - W a_prev = b
            ia = np.flatnonzero(active)
            if ia.size:
                rows.append(block(-w[ia], np.ones(ia.size), None, ia))
                rlo.append(b[ia])
                rhi.append(b[ia])
            iu = np.flatnonzero(unstable)
            if iu.size:
                # a - W a_prev >= b
                rows.append(block(-w[iu], np.ones(k), sp.csr_matrix((k, k)), iu))
                rlo.append(b[iu])
                rhi.append(np.full(k, np.inf))
                # a - W a_prev - l s <= b - l
                rows.append(block(-w[iu], np.ones(k), sp.diags(-l[iu]).tocsr(), iu))
                rlo.append(np.full(k, -np.inf))
                rhi.append(b[iu] - l[iu])
                # a - u s <= 0
                rows.append(block(sp.csr_matrix((k, size_prev)), np.ones(k),
                                  sp.diags(-u[iu]).tocsr(), iu))
                rlo.append(np.full(k, -np.inf))
                rhi.append(np.zeros(k))
            # inactive (stable off): a = 0 through its bounds [0, max(u, 0)] = [0, 0]
            offset_prev, size_prev = offset, n
            offset = width
        self.n = offset
        self.last_offset, self.last_size = offset_prev, size_prev
        self.rows = [self._pad(r) for r in rows]
        self.rlo, self.rhi = rlo, rhi
        self.bounds = Bounds(np.concatenate(var_lo), np.concatenate(var_hi))
        self.integrality = np.concatenate(integrality)
        self.n_input = lo.size

    def _pad(self, r):
        if r.shape[1] < self.n:
            r = sp.hstack([r, sp.csr_matrix((r.shape[0], self.n - r.shape[1]))], format="csr")
        return r

    def solve(self, margin: AffineLayer, time_limit: float, below: float = 0.0):
        """Find an input with margin(a_last) <= -below; returns (HiGHS status, x or None)."""
        row = sp.hstack([sp.csr_matrix((1, self.last_offset)), margin.weight,
                         sp.csr_matrix((1, self.n - self.last_offset - self.last_size))],
                        format="csr")
        a = sp.vstack(self.rows + [row], format="csr")
        lo = np.concatenate(self.rlo + [np.array([-np.inf])])
        hi = np.concatenate(self.rhi + [-margin.bias - below])
        res = milp(np.zeros(self.n), constraints=LinearConstraint(a, lo, hi),
                   integrality=self.integrality, bounds=self.bounds,
                   options={"time_limit": max(time_limit, 0.01), "presolve": True})
        x = None if res.x is None else res.x[:self.n_input]
        return res.status, x


@torch.no_grad()
def margins(model: nn.Module, x: torch.Tensor, y: int) -> torch.Tensor:
    """logit_y - logit_j for every class j, in float64 (on a copy; the model is untouched).

    Args:
        model: classifier returning logits.
        x: one image [C, H, W] in [0, 1].
        y: the label.
    Returns:
        float64 tensor [K]; entry y is 0, the point is misclassified iff another entry is <= 0.
    """
    m = copy.deepcopy(model).cpu().double().eval()
    logits = m(x.detach().cpu().double().unsqueeze(0))[0]
    return logits[y] - logits


# A feasible point of "margin <= 0" often lies exactly on the decision boundary (margin 0 up to
# rounding); the MILP is then re-solved with "margin <= -COUNTEREXAMPLE_GAP" (logit units) to
# get a counterexample that a forward pass confirms.
COUNTEREXAMPLE_GAP = 1e-4


def _refute(program, model, x, y, j, margin, lo, hi, budget):
    """Decide class j: 'infeasible', 'counterexample' (with the input), 'boundary', 'timed out'."""
    deadline = time.perf_counter() + budget
    for below in (0.0, COUNTEREXAMPLE_GAP):
        status, x_star = program.solve(margin, deadline - time.perf_counter(), below)
        if status == 2:
            return ("infeasible", None) if below == 0.0 else ("boundary", None)
        if x_star is None:
            return "timed out", None
        candidate = torch.from_numpy(np.clip(x_star, lo, hi)).reshape(x.shape)
        if margins(model, candidate, y)[j] <= 0:
            return "counterexample", candidate
        if deadline - time.perf_counter() <= 0:
            break
    # Feasible only within the solver's tolerances: the minimum margin is ~0, so the point is
    # not verified (conservative), but no counterexample was confirmed.
    return "boundary", None


def verify_point(model: nn.Module, x: torch.Tensor, y: int, eps: float, *, time_limit: float = 60.0,
                 attack=None, bounds: str = "linear",
                 layers: list[AffineLayer] | None = None) -> Verification:
    """Decide exactly whether the model is robust at (x, y) in the l-inf ball of radius eps.

    Implements: wong2020 §5.1 Table 2 "Verified" (the MILP of Tjeng et al. 2017).
    Args:
        model: a ReLU network accepted by affine_layers (e.g. mnist_net), any mode/device.
        x: one image in [0, 1], [C, H, W].
        y: its label.
        eps: l-inf radius in pixel units (0.1 for MNIST Table 2).
        time_limit: seconds of MILP solving for this point, over all wrong classes.
        attack: optional callable(model, xb, yb) -> delta tried first (e.g. partial(pgd, ...));
            a delta that flips the prediction is a counterexample, with no MILP needed.
        bounds: how the ReLU bounds (the big-M constants) are computed: 'interval'
            (interval arithmetic) or 'linear' (interval arithmetic intersected with
            back-substitution through linear ReLU relaxations: far fewer unstable ReLUs
            after the first layer). Both are sound; the MILP is exact with either.
        layers: affine_layers(model, x.shape), to reuse across points.
    Returns:
        Verification with status 'verified' (every wrong-class MILP infeasible or ruled out by
        the bounds), 'not verified' (misclassified, or a counterexample checked by a
        forward pass) or 'timed out'.
    """
    if x.dim() != 3:
        raise ValueError(f"verify_point takes one image [C, H, W]; got shape {tuple(x.shape)}")
    if bounds not in BOUNDS:
        raise ValueError(f"bounds must be one of {sorted(BOUNDS)}; got {bounds!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (pixel units, e.g. 0.1 for MNIST); got {eps}")
    start = time.perf_counter()
    y = int(y)
    x = x.detach().cpu().float()
    if layers is None:
        layers = affine_layers(model, tuple(x.shape))
    clean = margins(model, x, y)
    if bool((clean[torch.arange(clean.numel()) != y] <= 0).any()):
        return Verification("not verified", "misclassified", time.perf_counter() - start,
                            counterexample=x.clone())
    if attack is not None:
        device = next(model.parameters()).device
        delta = attack(model, x.unsqueeze(0).to(device), torch.tensor([y], device=device))
        x_adv = (x + delta[0].detach().cpu().float()).clamp(0, 1)
        adv = margins(model, x_adv, y)
        if bool((adv[torch.arange(adv.numel()) != y] <= 0).any()):
            return Verification("not verified", "counterexample (attack)",
                                time.perf_counter() - start, counterexample=x_adv)
    lo, hi = input_box(x, eps)
    relu_bounds = BOUNDS[bounds](layers, lo, hi)
    last_lo = np.maximum(relu_bounds[-1][0], 0.0) if relu_bounds else lo
    last_hi = np.maximum(relu_bounds[-1][1], 0.0) if relu_bounds else hi
    classes, pending = {}, []
    for j in torch.argsort(clean).tolist():  # most dangerous (smallest margin) first
        if j == y:
            continue
        margin = _margin_layer(layers[-1], y, j)
        lower = _interval(margin, last_lo, last_hi)[0][0]
        if bounds == "linear" and lower <= 0:
            lower = _backward_bound(margin.weight, margin.bias, layers[:-1], relu_bounds,
                                    lo, hi, lower=True)[0]
        if lower > 0:
            classes[j] = "bounds"
        else:
            pending.append((j, margin))
    unstable = sum(int(((l < 0) & (u > 0)).sum()) for l, u in relu_bounds)
    if not pending:
        return Verification("verified", f"{bounds} bounds", time.perf_counter() - start,
                            unstable, classes=classes)
    program = _Program(layers, relu_bounds, lo, hi)
    deadline = start + time_limit
    timed_out = False
    for i, (j, margin) in enumerate(pending):
        left = deadline - time.perf_counter()
        if left <= 0:
            classes[j] = "timed out"
            timed_out = True
            continue
        budget = left / (len(pending) - i)
        verdict, candidate = _refute(program, model, x, y, j, margin, lo, hi, budget)
        classes[j] = verdict
        if verdict == "counterexample":
            return Verification("not verified", "counterexample (milp)",
                                time.perf_counter() - start, program.unstable, candidate, classes)
        if verdict == "boundary":
            return Verification("not verified", "min margin within 1e-4 of 0",
                                time.perf_counter() - start, program.unstable, None, classes)
        timed_out |= verdict == "timed out"
    seconds = time.perf_counter() - start
    if timed_out:
        return Verification("timed out", "time limit", seconds, program.unstable, classes=classes)
    return Verification("verified", "milp", seconds, program.unstable, classes=classes)


def verify(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *,
           time_limit: float = 60.0, attack=None, bounds: str = "linear",
           progress: bool = False) -> list[Verification]:
    """verify_point over a batch of points (one MILP family per point).

    Args:
        model: a ReLU network accepted by affine_layers.
        images: [N, C, H, W] in [0, 1] (float) or uint8 (converted with /255).
        labels: [N] int labels.
        eps: l-inf radius in pixel units.
        time_limit: seconds per point.
        attack: optional callable(model, xb, yb) -> delta tried before the MILP.
        bounds: 'interval' or 'linear' (see verify_point).
        progress: print one line per point.
    Returns:
        list of Verification, one per point.
    """
    if images.dtype == torch.uint8:
        images = images.float() / 255
    layers = affine_layers(model, tuple(images.shape[1:]))
    results = []
    for i in range(images.shape[0]):
        r = verify_point(model, images[i], int(labels[i]), eps, time_limit=time_limit,
                         attack=attack, bounds=bounds, layers=layers)
        results.append(r)
        if progress:
            print(f"[verify] {i + 1}/{images.shape[0]}: {r.status} ({r.reason}, "
                  f"{r.unstable} unstable ReLUs, {r.seconds:.1f} s)", flush=True)
    return results


def summarize(results: list[Verification]) -> dict:
    """Counts and percentages of each status over a list of Verification results.

    Returns:
        dict with n, verified, not_verified, timed_out (counts), verified_pct (verified / n),
        upper_pct ((verified + timed out) / n: the most the true robust accuracy can be),
        mean_seconds.
    """
    n = len(results)
    if n == 0:
        raise ValueError("summarize needs at least one Verification")
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    return {
        "n": n,
        "verified": counts["verified"],
        "not_verified": counts["not verified"],
        "timed_out": counts["timed out"],
        "verified_pct": 100.0 * counts["verified"] / n,
        "upper_pct": 100.0 * (counts["verified"] + counts["timed out"]) / n,
        "mean_seconds": float(np.mean([r.seconds for r in results])),
    }
