"""What a training run records: its metric history, and the final evaluation (metrics.json).

History: ``train`` returns (and ``fatlib.runs`` saves as history.json) a list of dicts,
one per record: at iteration 0, every ``eval_every`` optimizer steps (or at the end of
every epoch when eval_every is 0) and at the end. Keys:

- iteration, epoch (passes over the data, float), lr / eps / alpha (of the last step),
  q (ZeroGrad quantile), rollbacks (roll-backs so far);
- train_loss, train_acc (%), delta_l1, delta_l2, delta_linf: means over the training
  minibatches since the previous record (adversarial examples of the method);
- clean_acc, fgsm_acc, pgd_acc (%) and clean_loss, fgsm_loss, pgd_loss on the first
  n_eval test images (eval mode, fp32; FGSM from zero with alpha = eps; PGD with
  eval_pgd_steps / eval_pgd_restarts / eval_alpha);
- grad_alignment (andriushchenko2020 eq. 5, on the same images; None for l2),
  cos_fgsm_pgd (mean cosine of FGSM and plain-PGD perturbations, first 256 images),
  pgd_fgsm_loss_ratio (plain-PGD loss / FGSM loss, first 256 images; andriushchenko2020
  Fig. 4);
- weight_update_l2 (l2 norm of the change of all parameters since the previous
  record) and weight_update_mse (per weight tensor, golgooni2021 Fig. 1);
- probe_delta_mse: MSE between this and the previous record's training perturbation
  of a fixed training minibatch (the first batch_size training images, same noise
  seed each time; golgooni2021 Fig. 2);
- guard_pgd_acc (early_stop_rule 'best' only; see fatlib.guards);
- time_attack, time_update, time_eval: cumulative wall seconds.

Final metrics: :func:`final_evaluation` (PGD-K-R on final_n_eval test images plus the cheap
sanity checks), or the last history record when final_n_eval is 0.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from fatlib import attacks, data, evaluate, metrics, sanity
from fatlib.config import TrainConfig
from fatlib.devices import autocast, seeded
from fatlib.methods import AttackState
from fatlib.threat import ThreatModel

SANITY_N = 100        # test images of the cheap sanity checks after every final evaluation


class RunHistory:
    """The history records of a training run (a part of ``fatlib.loop._Run``).

    Reads the run's counters, summed training statistics (sums), timers, fixed test subset
    (eval_x, eval_y) and probe minibatch (probe_x, probe_y); keeps prev_weights and
    prev_probe for the next record. Calls ``best_rule_check`` (fatlib.guards) when the
    'best' early-stop rule is on.
    """

    def record(self) -> None:
        """Append one history record: train stats since the last record and test-subset metrics."""
        t0 = time.perf_counter()
        cfg = self.cfg
        sums = self.dist.sum(self.sums.clone())
        n = max(sums[2].item(), 1.0)
        last = max(self.step - 1, 0)  # the step just taken: its lr, eps and alpha
        self._schedule_attack(last)
        rec = {"iteration": self.step, "epoch": self.step / (self.batches_per_pass * cfg.replays),
               "lr": self.lr(last), "eps": self.attack.threat.eps,
               "alpha": self.attack.alpha, "q": self.attack.q, "rollbacks": self.q_index,
               "train_loss": sums[0].item() / n if sums[2] else None,
               "train_acc": 100 * sums[1].item() / n if sums[2] else None,
               "delta_l1": sums[3].item() / n if sums[2] else None,
               "delta_l2": sums[4].item() / n if sums[2] else None,
               "delta_linf": sums[5].item() / n if sums[2] else None}
        self.sums.zero_()
        if cfg.early_stop and cfg.early_stop_rule == "best":
            rec.update(self.best_rule_check())
        if self.dist.main:
            rec.update(self._test_metrics())
            rec.update(self._weight_update())
            rec.update(self._probe_change())
        self._sync()
        self.times["eval"] += time.perf_counter() - t0
        rec.update({f"time_{k}": v for k, v in self.times.items()})
        self.history.append(rec)
        self.dirty = False
        if self.bar is not None and rec.get("pgd_acc") is not None:
            self.bar.set_postfix(clean=f"{rec['clean_acc']:.1f}", pgd=f"{rec['pgd_acc']:.1f}")
        if self.on_record and self.dist.main:
            self.on_record(self.history)

    def _test_metrics(self) -> dict:
        """Clean / FGSM / PGD accuracy (percent) and loss, gradient alignment and
        cos(delta_FGSM, delta_PGD) on the fixed test subset, in eval mode and fp32.

        pgd_loss comes from the evaluation PGD, which stops moving an example once it is
        misclassified: a lower bound on plain PGD's loss. pgd_fgsm_loss_ratio (andriushchenko2020
        Fig. 4) uses plain PGD, every example moving every step, on the first 256 examples."""
        if self.eval_x is None:
            return {}
        cfg, model = self.cfg, self.model
        threat = ThreatModel(cfg.norm, cfg.eps)
        names = ("clean", "fgsm", "pgd")
        sums = dict.fromkeys([f"{k}_{v}" for k in names for v in ("acc", "loss")], 0.0)
        n = len(self.eval_y)
        x_all, y_all = self._to_device(self.eval_x), self.eval_y.to(self.device)
        with evaluate.evaluation_mode(model), seeded(cfg.seed, "eval", self.step):
            for i in range(0, n, 128):
                x, y = x_all[i:i + 128], y_all[i:i + 128]
                deltas = {"clean": torch.zeros_like(x),
                          "fgsm": attacks.fgsm(model, x, y, threat, alpha=cfg.eps, init="zero"),
                          "pgd": attacks.pgd(model, x, y, threat, alpha=cfg.eval_alpha,
                                             steps=cfg.eval_pgd_steps,
                                             restarts=cfg.eval_pgd_restarts)}
                with torch.no_grad():
                    for name, d in deltas.items():
                        logits = model(x + d).float()
                        sums[f"{name}_loss"] += F.cross_entropy(logits, y, reduction="sum").item()
                        sums[f"{name}_acc"] += 100.0 * (logits.argmax(1) == y).sum().item()
            # cos(delta_FGSM, delta_PGD) needs PGD directions for every example: plain PGD
            # (no early stop, so misclassified examples move too), on the first 256 examples.
            x, y = x_all[:256], y_all[:256]
            d_pgd = attacks.pgd(model, x, y, threat, alpha=cfg.eval_alpha, steps=cfg.eval_pgd_steps,
                                early_stop=False)
            d_fgsm = attacks.fgsm(model, x, y, threat, alpha=cfg.eps, init="zero")
            cos = metrics.cosine(d_fgsm, d_pgd).mean().item()
            with torch.no_grad():
                ratio = (F.cross_entropy(model(x + d_pgd).float(), y)
                         / F.cross_entropy(model(x + d_fgsm).float(), y)).item()
            ga = (metrics.gradient_alignment(model, x_all, y_all, cfg.eps)
                  if cfg.norm == "linf" else None)
        return {k: v / n for k, v in sums.items()} | {"grad_alignment": ga, "cos_fgsm_pgd": cos,
                                                      "pgd_fgsm_loss_ratio": ratio}

    def _weight_update(self) -> dict:
        now = self._weights()
        mse = {k: (now[k] - self.prev_weights[k]).pow(2).mean().item()
               for k in now if now[k].dim() >= 2}
        total = math.sqrt(sum((now[k] - self.prev_weights[k]).pow(2).sum().item() for k in now))
        self.prev_weights = now
        return {"weight_update_l2": total, "weight_update_mse": mse}

    def _probe_change(self) -> dict:
        """MSE between this and the previous record's training perturbation of a fixed minibatch."""
        cfg = self.cfg
        state = AttackState(self.attack.threat, self.attack.alpha, self.attack.q)
        x, y = self._to_device(self.probe_x), self.probe_y.to(self.device)
        with seeded(cfg.seed, "probe"), autocast(self.device, self.precision):
            delta = self.method.probe(self.model, x, y, state).detach().float().cpu()
        prev, self.prev_probe = self.prev_probe, delta
        same = prev is not None and prev.shape == delta.shape
        return {"probe_delta_mse": (delta - prev).pow(2).mean().item() if same else None}


def final_evaluation(model: nn.Module, cfg: TrainConfig, *, device=None, progress=False) -> dict:
    """Clean / FGSM / PGD-K-R accuracy of a trained model on the first final_n_eval test images,
    and the cheap sanity checks of that evaluation.

    Uses fatlib.evaluate.evaluate (eval mode, fp32) with the config's eps and final PGD
    settings, then fatlib.sanity.run_cheap on the first SANITY_N of the same images.
    Returns:
        dict with clean_acc, fgsm_acc, pgd_acc (percent), n, the attack description, source,
        and sanity (a list of {name, passed, message}).
    """
    device = device or next(model.parameters()).device
    images, labels, source = data.load_with_source(cfg.dataset, "test", n=cfg.final_n_eval)
    alpha = cfg.final_pgd_alpha if cfg.final_pgd_alpha is not None else cfg.eps / 4
    t0 = time.perf_counter()
    with seeded(cfg.seed, "final"):
        correct = evaluate.evaluate(model, data.to_float(images).to(device), labels.to(device),
                                    ThreatModel(cfg.norm, cfg.eps),
                                    attacks=("clean", "fgsm", "pgd"), pgd_steps=cfg.final_pgd_steps,
                                    pgd_restarts=cfg.final_pgd_restarts,
                                    pgd_alpha=alpha, progress=progress)
    out = {f"{k}_acc": evaluate.accuracy(v) for k, v in correct.items()}
    out.update(n=len(labels), eps=cfg.eps, norm=cfg.norm, pgd_steps=cfg.final_pgd_steps,
               pgd_restarts=cfg.final_pgd_restarts, pgd_alpha=alpha, source=source,
               attack=f"PGD-{cfg.final_pgd_steps}-{cfg.final_pgd_restarts} (alpha {alpha:.4g})",
               seconds=time.perf_counter() - t0)
    out["sanity"] = sanity_checks(model, cfg, images[:SANITY_N], labels[:SANITY_N], device)
    return out


def sanity_checks(model: nn.Module, cfg: TrainConfig, images, labels, device=None) -> list:
    """fatlib.sanity.run_cheap on test images at the config's threat model, as JSON-able dicts.

    Args:
        model: the trained model; cfg: its config; images, labels: uint8 test images [N, C, H, W]
            and labels [N] (about SANITY_N); device: where to compute (default: the model's).
    Returns:
        list of {"name", "passed", "message"}, in the order of fatlib.sanity.CHEAP_CHECKS.
    """
    device = device or next(model.parameters()).device
    with seeded(cfg.seed, "sanity"):
        checks = sanity.run_cheap(model, data.to_float(images).to(device), labels.to(device),
                                  ThreatModel(cfg.norm, cfg.eps))
    return [dataclasses.asdict(c) for c in checks]


def last_record_metrics(history: list) -> dict:
    """The final metrics of a run without a final evaluation (final_n_eval 0): its last record."""
    last = history[-1]
    keys = ("clean_acc", "fgsm_acc", "pgd_acc", "clean_loss", "pgd_loss")
    return {k: last.get(k) for k in keys} | {"from": "last history record"}
