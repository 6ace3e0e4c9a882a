"""Guards against catastrophic overfitting: early stopping and ZeroGrad's roll-back of q.

Two rules (``TrainConfig.early_stop_rule``):

- 'drop' (wong2020 App. B; golgooni2021 §5.2 for the roll-back): after every pass, PGD-5
  accuracy on the pass's first minibatch; a drop of more than COLLAPSE_DROP points from
  the last good pass is a collapse. Then the run restores the last good pass and either
  rolls back with the next q of ``rollback_qs``, or stops early (``early_stop``), or only
  notes the collapse.
- 'best' (andriushchenko2020's code): at every history record, PGD-10 accuracy on the
  first BEST_GUARD_N unaugmented training images; the run trains on and keeps the
  weights with the best guard accuracy.
"""

from __future__ import annotations

import torch

from fatlib import attacks, evaluate, models
from fatlib.checkpoints import snapshot
from fatlib.devices import seeded
from fatlib.threat import ThreatModel

COLLAPSE_DROP = 20.0  # percentage points of PGD accuracy lost in one epoch (wong2020 App. B: 0.2)
BEST_GUARD_N = 256    # 'best' rule: fixed training images checked (andriushchenko2020's code)


class RunGuards:
    """The catastrophic-overfitting guards of a training run (a part of ``fatlib.loop._Run``).

    Reads the run's model, config, step and pass counters and guard images (guard_x,
    guard_y); keeps prev_probe_acc (the last good 'drop' accuracy), best_guard and
    best_model ('best' rule), and appends rollback / early_stop / collapse / best_kept
    events.
    """

    def guard_accuracy(self, x, y, steps: int = 5) -> float:
        """PGD-`steps` (1 restart, alpha eps/4) accuracy in percent on training images x, y
        (wong2020 App. B: PGD-5 on a minibatch; the 'best' rule: PGD-10 on fixed images)."""
        cfg, model = self.cfg, self.model
        with evaluate.evaluation_mode(model), seeded(cfg.seed, "guard", self.step):
            delta = attacks.pgd(model, x, y, ThreatModel(cfg.norm, cfg.eps), alpha=cfg.eps / 4,
                                steps=steps, restarts=1)
            with torch.no_grad():
                acc = (model(x + delta).argmax(1) == y).float().mean() * 100
        return self.dist.from_main(acc.to(self.device)).item()

    def best_rule_check(self) -> dict:
        """'best' rule, at a history record: PGD-10 accuracy on the first BEST_GUARD_N
        unaugmented training images (andriushchenko2020's code), keeping the best weights."""
        x, y = self._to_device(self.guard_x), self.guard_y.to(self.device)
        acc = self.guard_accuracy(x, y, steps=10)
        self.keep_if_best(acc)
        return {"guard_pgd_acc": acc}

    def keep_if_best(self, acc: float) -> None:
        """'best' rule: remember the weights if the guard accuracy is the best so far."""
        if self.best_guard is None or acc > self.best_guard["acc"]:
            self.best_guard = {"acc": acc, "epoch": self.passes_done, "iteration": self.step}
            self.best_model = {k: v.detach().cpu().clone()
                               for k, v in self.model.state_dict().items()}

    def restore_best(self) -> None:
        """'best' rule, end of training: load the kept weights and note it in the events."""
        if self.best_model is None or any(e.get("event") == "best_kept" for e in self.events):
            return
        models.load_weights(self.model, self.best_model, what="best guard checkpoint")
        best = self.best_guard
        self.events.append({"event": "best_kept", "epoch": best["epoch"],
                            "iteration": best["iteration"], "guard_pgd_acc": best["acc"],
                            "last_epoch": self.passes_done})

    def drop_rule_check(self, first, good: dict) -> tuple[dict, str]:
        """'drop' rule, after a pass: PGD-5 on the pass's first minibatch, and what follows.

        Args:
            first: the pass's first global minibatch (x, y) on the CPU.
            good: the last good state (a checkpoints.snapshot).
        Returns:
            (the last good state now, outcome): 'ok' (no collapse; this pass is the new good
            state), 'rollback' (restored, next q), 'stop' (restored, stopped early) or
            'collapse' (noted in the events, training goes on).
        """
        cfg = self.cfg
        acc = self.guard_accuracy(self._to_device(first[0]), first[1].to(self.device))
        prev = self.prev_probe_acc
        if prev is None or acc >= prev - COLLAPSE_DROP:
            self.prev_probe_acc = acc
            return snapshot(self), "ok"
        # catastrophic overfitting detected: roll back with the next q, stop early, or note it
        event = {"iteration": self.step, "epoch": self.passes_done, "guard_pgd_acc": acc,
                 "previous_guard_pgd_acc": prev}
        if self.q_index < len(cfg.rollback_qs) or cfg.early_stop:
            self.load_state_dict(good, keep_records=True)
            event["restored_epoch"] = self.passes_done
        if self.q_index < len(cfg.rollback_qs):
            self.q_index += 1
            q = cfg.rollback_qs[self.q_index - 1]
            self.events.append({**event, "event": "rollback", "q": q})
            return snapshot(self), "rollback"
        if cfg.early_stop:
            self.stopped_early = True
            self.events.append({**event, "event": "early_stop"})
            return good, "stop"
        self.events.append({**event, "event": "collapse"})
        return good, "collapse"
