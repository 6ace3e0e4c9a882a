"""Checkpoints: the file (written atomically, loaded weights-only) and what of a run it holds.

A checkpoint is a dict of tensors and JSON strings: the config, the model, optimizer and
grad-scaler states, each DDP rank's RNG streams and unreduced sums, the history and events
and the loop's counters; with it a run continues exactly where it stopped (resume, and
the last good state that early stopping and ZeroGrad's roll-back restore).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from fatlib import models, regularizers
from fatlib.config import TrainConfig
from fatlib.devices import resumed_precision

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path, ckpt: dict) -> None:
    """Write a checkpoint dict atomically (temporary file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """Load a fatlib checkpoint with torch.load(weights_only=True); JSON fields decoded."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ValueError(f"{path} is not a fatlib checkpoint (no 'config'); to load a plain "
                         f"state_dict use fatlib.models.load_weights")
    ckpt = decoded(ckpt)
    ckpt["config"] = TrainConfig.from_json(ckpt["config"])
    return ckpt


def load_model(path, device="cpu") -> tuple[TrainConfig, nn.Module]:
    """(config, model in eval mode) from a fatlib checkpoint file."""
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    model = models.build(cfg.model, cfg.dataset, **cfg.model_kw)
    models.load_weights(model, ckpt["model"], what=f"checkpoint {path}")
    return cfg, model.to(device).eval()


def decoded(ckpt: dict) -> dict:
    """An in-memory state_dict in the decoded form load_checkpoint returns (JSON fields parsed)."""
    out = dict(ckpt)
    for key in ("history", "events", "state"):
        out[key] = json.loads(out[key])
    return out


def snapshot(run) -> dict:
    """A deep copy of the run's state (the 'last good' state for early stop / roll-back)."""
    return decoded(copy.deepcopy(run.state_dict()))


class RunCheckpoint:
    """The checkpoint state of a training run (a part of ``fatlib.loop._Run``).

    Reads and restores the run's model, optimizer (opt), grad scaler, attack state, counters
    (step, passes_done, q_index), records (history, events, times, metrics) and guard state.
    """

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: a dict of tensors and JSON strings."""
        c = self.cfg
        state = {"step": self.step, "passes_done": self.passes_done, "q_index": self.q_index,
                 "times": self.times, "prev_probe_acc": self.prev_probe_acc,
                 "stopped_early": self.stopped_early, "best_guard": self.best_guard,
                 "complete": self.complete, "precision": self.precision,
                 "metrics": self.metrics, "dirty": self.dirty, "train_source": self.source,
                 "total_steps": self.total,
                 "elle": None if self.attack.elle is None else dataclasses.asdict(self.attack.elle)}
        ckpt = {"config": c.to_json(), "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "ranks": self.dist.gather(self._rank_state()),
                "prev_weights": self.prev_weights, "state": json.dumps(state),
                "history": json.dumps(self.history), "events": json.dumps(self.events)}
        if self.prev_probe is not None:
            ckpt["prev_probe"] = self.prev_probe.detach().cpu().clone()
        if self.best_model is not None:
            ckpt["best_model"] = self.best_model
        return ckpt

    def _rank_state(self) -> dict:
        """What differs between DDP ranks: RNG streams, the unreduced sums, the kept delta."""
        state = {"rng_cpu": torch.get_rng_state(), "sums": self.sums.clone()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.attack.delta is not None:
            state["attack_delta"] = self.attack.delta.detach().cpu().clone()
        return state

    def _load_rank_state(self, ranks: list) -> None:
        """Restore this rank's entry of a checkpoint's 'ranks' (saved with the same world size)."""
        if len(ranks) != self.dist.world:
            raise ValueError(f"the checkpoint was written by {len(ranks)} processes, this run has "
                             f"{self.dist.world}: resume it with --nproc_per_node={len(ranks)}")
        mine = ranks[self.dist.rank]
        torch.set_rng_state(mine["rng_cpu"])
        if "rng_cuda" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["rng_cuda"], self.device)
        self.sums = mine["sums"].clone()
        delta = mine.get("attack_delta")
        self.attack.delta = None if delta is None else delta.to(self.device)

    def load_state_dict(self, ckpt: dict, *, keep_records: bool = False) -> None:
        """Restore a state_dict (decoded as by load_checkpoint).

        keep_records: keep this run's history, events and timers (roll-back / early stop).
        """
        models.load_weights(self.model, ckpt["model"], what="checkpoint")
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        legacy = {k: ckpt[k] for k in ("rng_cpu", "rng_cuda", "sums", "attack_delta") if k in ckpt}
        # the ranks' entries before the per-rank state
        self._load_rank_state(ckpt.get("ranks") or [legacy] * self.dist.world)
        st = ckpt["state"]
        self.step, self.passes_done, self.q_index = st["step"], st["passes_done"], st["q_index"]
        self.prev_probe_acc, self.stopped_early = st["prev_probe_acc"], st["stopped_early"]
        self.complete, self.metrics = st["complete"], st["metrics"]
        self.precision = resumed_precision(self.cfg.precision, st.get("precision"), self.device)
        self.best_guard, self.best_model = st.get("best_guard"), ckpt.get("best_model")
        self.prev_weights = {k: v.clone() for k, v in ckpt["prev_weights"].items()}
        self.prev_probe = ckpt.get("prev_probe")
        elle = st.get("elle")  # ELLE-A's adaptive lambda (the same on every rank)
        self.attack.elle = None if elle is None else regularizers.AdaptiveLambda(**elle)
        if not keep_records:
            self.history, self.events, self.times = ckpt["history"], ckpt["events"], st["times"]
            self.dirty = st["dirty"]
        else:
            self.dirty = True

