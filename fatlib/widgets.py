"""Live explorers (ipywidgets) and the computations behind the book's sliders.

In a running kernel, :func:`attack_explorer` recomputes an attack whenever eps, the
attack or the image changes and shows x + delta, the perturbation and the model's
prediction. The static book cannot recompute: :func:`sweep` runs the same computation
(:func:`attack_view`) over a grid of eps in advance, for
``fatlib.plots.attack_slider_figure``.
"""

from __future__ import annotations

import html
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from fatlib import attacks
from fatlib.threat import ThreatModel

Attack = Callable[..., torch.Tensor]  # attack(model, x, y, threat) -> delta


def attack_menu(norm: str, *, pgd_steps: int = 10) -> dict:
    """The book's standard one-step and multi-step attacks for a norm, with the papers' steps.

    l-inf: FGSM (zero init, alpha = eps), FGSM-RS (random init, alpha = 1.25 eps; wong2020),
    PGD-K (random start, alpha = eps/4). l2: FGSM-l2 (alpha = eps), l2fast (random init in
    the l2 ball, alpha = 1.5 eps; l2fast), PGD-K (alpha = eps/4).
    Returns:
        name -> attack(model, x, y, threat) -> delta.
    """
    def pgd(model, x, y, threat):
        return attacks.pgd(model, x, y, threat, alpha=threat.eps / 4, steps=pgd_steps,
                           early_stop=False)

    def fgsm_rs(model, x, y, threat):
        return attacks.fgsm(model, x, y, threat, init="random", alpha=1.25 * threat.eps)

    if norm == "linf":
        return {"FGSM": attacks.fgsm, "FGSM-RS": fgsm_rs, f"PGD-{pgd_steps}": pgd}
    if norm == "l2":
        return {"FGSM-l2": attacks.fgsm, "l2fast": attacks.l2fast, f"PGD-{pgd_steps}": pgd}
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None):
    """Class probabilities [B, K] at x, and the per-example cross-entropy [B] if y is given.

    Args:
        model: classifier in the mode the caller set (eval for the book).
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B], or None.
    """
    logits = model(x).float()
    loss = F.cross_entropy(logits, y, reduction="none") if y is not None else None
    return logits.softmax(1), loss


def attack_view(model, x: torch.Tensor, y: torch.Tensor, attack: Attack, threat: ThreatModel):
    """What an explorer shows for one attack at one eps: (delta [B, C, H, W], probs [B, K])."""
    delta = attack(model, x, y, threat)
    return delta, predict(model, x + delta)[0]


def sweep(model, x: torch.Tensor, y: torch.Tensor, attack_fns: dict, norm: str,
          eps_values: Sequence[float]) -> list:
    """:func:`attack_view` for every attack and eps, per image (what a static slider shows).

    Args:
        x: images in [0, 1], [B, C, H, W]; y: labels [B].
        attack_fns: name -> attack (e.g. attack_menu(norm)).
        norm: 'linf' or 'l2'; eps_values: pixel units.
    Returns:
        per image b, a dict name -> list over eps of (delta [C, H, W], probs [K]).
    """
    out = [{name: [] for name in attack_fns} for _ in range(x.shape[0])]
    for eps in eps_values:
        threat = ThreatModel(norm, eps)
        for name, attack in attack_fns.items():
            delta, probs = attack_view(model, x, y, attack, threat)
            for b in range(x.shape[0]):
                out[b][name].append((delta[b], probs[b]))
    return out


@torch.no_grad()
def loss_along(model, x: torch.Tensor, y: torch.Tensor, direction: torch.Tensor,
               steps: Sequence[float]) -> torch.Tensor:
    """Per-example cross-entropy at x + t * direction, clipped to [0, 1], for each t.

    Args:
        x: images in [0, 1], [B, C, H, W]; y: labels [B].
        direction: [B, C, H, W] (e.g. sign of the input gradient, or a random sign).
        steps: the t values (pixel units for a sign direction).
    Returns:
        [len(steps), B] losses.
    """
    return torch.stack([predict(model, (x + t * direction).clamp(0, 1), y)[1] for t in steps])


# --------------------------------------------------------------------------- live widget

def _probability_html(probs: torch.Tensor, label: int, classes: Sequence[str], top: int = 3) -> str:
    rows = []
    for k in probs.argsort(descending=True)[:top].tolist():
        colour = "#2ca02c" if k == label else "#d62728" if k == int(probs.argmax()) else "#9aa5b1"
        p = 100 * float(probs[k])
        rows.append(f"<div>{html.escape(classes[k])}: {p:.1f}%<div style='background:{colour};"
                    f"height:10px;width:{p * 1.5:.0f}px'></div></div>")
    return "".join(rows)


def attack_explorer(model, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                    *, norm: str = "linf", eps_max: float, eps: float | None = None,
                    attack_fns: dict | None = None, scale: int = 5):
    """An ipywidgets explorer: drag eps, pick the attack and the image, see x + delta,
    the perturbation (magnified) and the model's top-3 prediction change.

    Args:
        model: classifier in eval mode.
        images: float images in [0, 1], [N, C, H, W]; labels: [N].
        classes: class names.
        norm: 'linf' or 'l2'; eps_max, eps: slider range and start (pixel units).
        attack_fns: name -> attack (default attack_menu(norm)).
        scale: image enlargement.
    Returns:
        ipywidgets.VBox; its .update() recomputes (called on every change).
    """
    import ipywidgets as w

    from fatlib.plots import image_png, magnify

    attack_fns = attack_fns or attack_menu(norm)
    eps_slider = w.FloatSlider(value=eps or eps_max / 2, min=eps_max / 50, max=eps_max,
                               step=eps_max / 50, description="eps", readout_format=".3f",
                               continuous_update=False)
    which = w.Dropdown(options=list(attack_fns), description="attack")
    index = w.IntSlider(value=0, min=0, max=len(images) - 1, description="image",
                        continuous_update=False)
    adv, pert = w.Image(format="png"), w.Image(format="png")
    pred, clean_pred = w.HTML(), w.HTML()
    caption = w.HTML()

    def update(_=None):
        i = index.value
        x, y = images[i:i + 1], labels[i:i + 1]
        delta, probs = attack_view(model, x, y, attack_fns[which.value],
                                   ThreatModel(norm, eps_slider.value))
        adv.value = image_png((x + delta)[0], scale)
        pert.value = image_png(magnify(delta[0]), scale)
        label = int(y)
        pred.value = "<b>attacked</b>" + _probability_html(probs[0], label, classes)
        clean_pred.value = "<b>clean</b>" + _probability_html(predict(model, x)[0][0], label,
                                                              classes)
        caption.value = (f"true class: <b>{html.escape(classes[label])}</b>; "
                         f"{which.value}, {norm} eps = {eps_slider.value:.4f}; "
                         f"‖δ‖ = {float(ThreatModel(norm, eps_slider.value).norms(delta)[0]):.4f}")

    for control in (eps_slider, which, index):
        control.observe(update, names="value")
    box = w.VBox([w.HBox([eps_slider, which, index]), caption,
                  w.HBox([w.VBox([w.HTML("x + δ"), adv]), w.VBox([w.HTML("δ magnified"), pert]),
                          clean_pred, pred])])
    box.update = update
    update()
    return box
