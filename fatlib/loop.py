"""The training loop: one loop for every method, on 1 or N processes (DDP).

:func:`train` builds a :class:`_Run` (the mutable state of one run: model, optimizer,
data, attack state, counters), resumes it from run_dir/checkpoint.pt if there is one,
and runs passes over the data; after each pass it checkpoints and applies the
catastrophic-overfitting guards (fatlib.guards); at the end it evaluates the model
(fatlib.history.final_evaluation). ``_Run`` gathers its parts from fatlib.history (the
metric history), fatlib.guards (early stopping, roll-back) and fatlib.checkpoints (what a
checkpoint holds); the optimizer step and the pass over the data are here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fatlib import data, metrics, models, schedules
from fatlib.checkpoints import CHECKPOINT, RunCheckpoint, load_checkpoint, save_checkpoint, snapshot
from fatlib.config import TrainConfig
from fatlib.devices import (Dist, autocast, derived_seed, init_distributed, resolve_device,
                            resolve_precision)
from fatlib.guards import BEST_GUARD_N, RunGuards
from fatlib.history import RunHistory, final_evaluation, last_record_metrics
from fatlib.methods import AttackState, attack_schedule, make_method
from fatlib.threat import ThreatModel


class NonFiniteLoss(RuntimeError):
    """The training loss became nan or inf; the run stopped, its last checkpoint kept."""


@dataclass
class TrainResult:
    """What train returns: the model (eval mode) and everything recorded about the run."""

    config: TrainConfig
    model: nn.Module
    history: list
    metrics: dict | None
    events: list
    complete: bool
    steps_run: int
    run_dir: Path | None = None


class _Run(RunHistory, RunGuards, RunCheckpoint):
    """The mutable state of one training run and the work the loop delegates.

    Set up here with the optimizer step and the pass over the data; its history records,
    guards and checkpoint state are the methods of RunHistory, RunGuards and RunCheckpoint.
    """

    def __init__(self, cfg: TrainConfig, device, dist: Dist, progress: bool, on_record):
        self.cfg, self.device, self.dist, self.on_record = cfg, device, dist, on_record
        torch.manual_seed(cfg.seed)
        self.model = models.build(cfg.model, cfg.dataset, **cfg.model_kw).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model
        if dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.opt = self._optimizer()
        self.precision = resolve_precision(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.method = make_method(cfg)
        self.images, self.labels, self.source = data.load_with_source(cfg.dataset, "train",
                                                                      n=cfg.n_train)
        self.batches_per_pass = math.ceil(len(self.labels) / cfg.batch_size)
        self.total = cfg.passes * self.batches_per_pass * cfg.replays
        self.eval_x = self.eval_y = self.eval_source = None
        if cfg.n_eval:
            imgs, self.eval_y, self.eval_source = data.load_with_source(cfg.dataset, "test",
                                                                        n=cfg.n_eval)
            self.eval_x = data.to_float(imgs)
        n_probe = min(cfg.batch_size, len(self.labels))
        self.probe_x, self.probe_y = data.to_float(self.images[:n_probe]), self.labels[:n_probe]
        n_guard = min(BEST_GUARD_N, len(self.labels))
        self.guard_x, self.guard_y = data.to_float(self.images[:n_guard]), self.labels[:n_guard]
        self.attack = AttackState(ThreatModel(cfg.norm, cfg.eps), cfg.alpha_value, cfg.zg_q)
        # counters and records (all saved in checkpoints)
        self.step, self.passes_done, self.q_index = 0, 0, 0
        self.steps_taken = 0            # optimizer steps run by this call (not restored)
        self.history, self.events = [], []
        self.sums = torch.zeros(6, dtype=torch.float64)  # loss, correct, n, l1, l2, linf
        self.times = {"attack": 0.0, "update": 0.0, "eval": 0.0}
        self.prev_weights = self._weights()
        self.prev_probe = None
        self.prev_probe_acc = None      # guard: PGD-5 accuracy at the last good epoch
        self.stopped_early = False
        self.best_guard = None          # 'best' rule: {"acc", "epoch"} of the kept weights
        self.best_model = None          # ... and those weights (CPU)
        self.complete = False
        self.metrics = None
        self.dirty = True               # model changed since the last history record
        torch.manual_seed(derived_seed(cfg.seed, "train", dist.rank))
        self.bar = None
        if progress and dist.main:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, desc=f"{cfg.method} {cfg.model}", unit="it")

    # --- helpers
    def _optimizer(self):
        c, params = self.cfg, self.model.parameters()
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr_max, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr_max, momentum=c.momentum, nesterov=c.nesterov,
                               weight_decay=c.weight_decay)

    def _weights(self) -> dict:
        return {k: p.detach().float().cpu().clone() for k, p in self.model.named_parameters()}

    def _to_device(self, x):
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def lr(self, step: int) -> float:
        c = self.cfg
        kw = {"cyclic": {"peak": c.lr_peak},
              "piecewise": {"drops": c.lr_drops, "factor": c.lr_factor},
              "onedrop": {"factor": c.lr_factor}}.get(c.lr_schedule, {})
        return schedules.learning_rate(c.lr_schedule, step, self.total, c.lr_max, epochs=c.epochs,
                                       **kw)

    def _schedule_attack(self, step: int) -> None:
        """Set eps, alpha and q for this step (see attack_schedule)."""
        c = self.cfg
        eps, alpha = attack_schedule(c, step, self.total / c.epochs)
        self.attack.threat = ThreatModel(c.norm, eps)
        self.attack.alpha = alpha
        self.attack.q = ((c.zg_q,) + c.rollback_qs)[self.q_index]

    # --- one optimizer step
    def train_step(self, x, y) -> None:
        cfg, s = self.cfg, self.attack
        for group in self.opt.param_groups:
            group["lr"] = self.lr(self.step)
        self._schedule_attack(self.step)
        t0 = time.perf_counter()
        with autocast(self.device, self.precision):
            delta = self.method.perturb(self.model, x, y, s).detach()
        self._sync()
        t1 = time.perf_counter()
        if self.method.on_delta_grad:
            delta.requires_grad_(True)
        with autocast(self.device, self.precision):
            logits = self.net(x + delta)
            loss = F.cross_entropy(logits, y)
            reg = self.method.regularizer(self.model, x, y, s) if self.method.regularizer else None
            total = loss if reg is None else loss + reg
        if not torch.isfinite(total.detach()).all():
            raise NonFiniteLoss(
                f"training loss is {total.item()} at iteration {self.step} (epoch "
                f"{self.passes_done + 1}, lr {self.lr(self.step):.4g}); the run stopped and its "
                f"last good checkpoint (epoch {self.passes_done}) is kept. Lower lr_max, use "
                f"fp32 or grad_clip, then train again (it resumes from that checkpoint).")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.method.on_delta_grad:
            self.method.on_delta_grad(s, x, delta, delta.grad)
        if cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            clip = (nn.utils.clip_grad_norm_ if cfg.grad_clip_mode == "norm"
                    else nn.utils.clip_grad_value_)
            clip(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self._sync()
        t2 = time.perf_counter()
        norms, n = metrics.perturbation_norms(delta), len(y)
        self.sums += torch.tensor([loss.item() * n, (logits.argmax(1) == y).sum().item(), n,
                                   norms["l1"] * n, norms["l2"] * n, norms["linf"] * n],
                                  dtype=torch.float64)
        self.times["attack"] += t1 - t0
        self.times["update"] += t2 - t1
        self.step += 1
        self.steps_taken += 1
        self.dirty = True
        if self.bar is not None:
            self.bar.update(1)

    def train_pass(self, max_steps: int | None = None):
        """One pass over the training data (each minibatch `replays` times), with its records.

        Returns:
            the pass's first global minibatch (x, y) on the CPU, or None if max_steps
            stopped the pass early.
        """
        cfg, first = self.cfg, None
        for xb, yb in data.batches(self.images, self.labels, cfg.batch_size, shuffle=True,
                                   seed=cfg.seed, epoch=self.passes_done, augment=cfg.augment):
            first = (xb, yb) if first is None else first
            x, y = self._to_device(self.dist.slice(xb)), self.dist.slice(yb).to(self.device)
            for _ in range(self.method.replays):
                if max_steps is not None and self.step >= max_steps:
                    return None
                self.train_step(x, y)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.record()
        self.passes_done += 1
        if not cfg.eval_every:
            self.record()
        return first



def train(config: TrainConfig, run_dir=None, *, progress: bool = False,
          until_epoch: int | None = None, max_steps: int | None = None,
          on_record: Callable | None = None, device: str | None = None) -> TrainResult:
    """Train a model as `config` says, resuming from run_dir/checkpoint.pt if it exists.

    Implements: wong2020 Alg. 1-3 (+ App. B early stopping), andriushchenko2020 §5
    (GradAlign), golgooni2021 Alg. 1-2 (+ §5.2 roll-back of q), l2fast Alg. 1, with DDP
    when started by torchrun (WORLD_SIZE > 1; each rank takes its slice of the global batch).
    Args:
        config: the TrainConfig.
        run_dir: folder for checkpoint.pt (written every epoch by rank 0); None: no files.
        progress: show a tqdm bar.
        until_epoch: stop (with a checkpoint) after this many passes; train again to go on.
        max_steps: stop after this many optimizer steps in total (no checkpoint is written
            mid-epoch; used to re-run the first steps of a record).
        on_record: callback(history) after each new history record (rank 0).
        device: overrides config.device ('cpu', 'cuda', ...).
    Returns:
        TrainResult(config, model (eval mode), history, metrics, events, complete, steps_run).
    Raises:
        ValueError: the checkpoint in run_dir belongs to another config or architecture.
        NonFiniteLoss: the loss became nan/inf (the last good checkpoint is kept).
    """
    cfg = config
    dev = resolve_device(device or cfg.device)
    dist = init_distributed(dev)
    run = _Run(cfg, dev, dist, progress, on_record)
    path = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if path is not None and path.exists():
        _resume(run, path)

    def save():
        if path is not None:
            ckpt = run.state_dict()  # every rank: its RNG, sums and delta are gathered
            if dist.main:
                save_checkpoint(path, ckpt)

    # the 'drop' rule checks after every pass; the 'best' rule at each history record
    drop_rule = (cfg.early_stop and cfg.early_stop_rule != "best"
                 or not cfg.early_stop and bool(cfg.rollback_qs))
    good = snapshot(run) if drop_rule else None
    run.model.train()
    if not run.history:
        run.record()
    last = cfg.passes if until_epoch is None else min(cfg.passes, until_epoch)
    while not run.complete and run.passes_done < last:
        first = run.train_pass(max_steps)
        if first is None:  # max_steps reached inside the pass
            break
        outcome = "ok"
        if drop_rule:
            good, outcome = run.drop_rule_check(first, good)
        if outcome == "stop":
            break
        save()  # the last pass too: a kill in the final evaluation keeps the trained weights
    if not run.complete and (run.passes_done >= cfg.passes or run.stopped_early):
        _finish(run, progress)
        save()
    if run.bar is not None:
        run.bar.close()
    run.model.eval()
    return TrainResult(cfg, run.model, run.history, run.metrics, run.events, run.complete,
                       run.steps_taken, Path(run_dir) if run_dir is not None else None)


def _resume(run: _Run, path: Path) -> None:
    """Continue a run from its checkpoint, which must belong to the same config."""
    ckpt = load_checkpoint(path)
    if ckpt["config"] != run.cfg:
        raise ValueError(f"checkpoint {path} was written for config {ckpt['config'].hash()}, "
                         f"not {run.cfg.hash()}; use another run_dir or delete the checkpoint")
    run.load_state_dict(ckpt)
    if run.bar is not None:
        run.bar.update(run.step)


def _finish(run: _Run, progress: bool) -> None:
    """End of training: the last record, the kept 'best' weights and (rank 0) the metrics."""
    cfg = run.cfg
    if run.dirty:
        run.record()
    run.complete = True
    run.restore_best()
    run.model.eval()
    if run.dist.main:
        run.metrics = (final_evaluation(run.model, cfg, device=run.device, progress=progress)
                       if cfg.final_n_eval else last_record_metrics(run.history))
        run.metrics.update(stopped_early=run.stopped_early, events=run.events,
                           steps=run.step, precision=run.precision, train_source=run.source,
                           history_source=run.eval_source,
                           time_train_s=run.times["attack"] + run.times["update"],
                           time_eval_s=run.times["eval"])
