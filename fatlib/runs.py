"""The run store and records: the only module (with fatlib.book) that knows the disk layout.

A run folder is named by its config hash, under ``$FATLIB_RUNS_DIR`` (default
``<repo>/runs/``, which holds a ``.gitignore`` so it never enters git)::

    runs/<hash>/config.json  history.json  metrics.json  checkpoint.pt

A record is a finished run kept in the repository with its provenance, so the book can
show it without re-training (``data/records/<name>/``)::

    config.json  history.json  metrics.json  provenance.json  [weights.pt if < 5 MB]
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import fatlib
from fatlib import models
from fatlib.train import CHECKPOINT, TrainConfig, load_model, native_bf16_cpu, train

REPO = Path(__file__).resolve().parent.parent
RECORD_FILES = ("config.json", "history.json", "metrics.json")
MAX_RECORD_WEIGHTS = 5 * 2**20  # bytes: weights of smaller models are kept in the record


def runs_dir() -> Path:
    """$FATLIB_RUNS_DIR, or <repo>/runs."""
    return Path(os.environ.get("FATLIB_RUNS_DIR") or REPO / "runs")


def records_dir() -> Path:
    """$FATLIB_RECORDS_DIR, or <repo>/data/records."""
    return Path(os.environ.get("FATLIB_RECORDS_DIR") or REPO / "data" / "records")


def run_path(config: TrainConfig) -> Path:
    """The folder of a config's run: runs_dir() / config.hash()."""
    return runs_dir() / config.hash()


def is_main() -> bool:
    """True unless this is a non-zero rank of an initialised process group (DDP)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (tmp + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    return json.loads(Path(path).read_text())


def _ensure_runs_dir() -> Path:
    root = runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if root == REPO / "runs" and not ignore.exists():
        ignore.write_text("# training runs are a cache: never committed\n*\n")
    return root


@dataclass
class Run:
    """A trained run: config, model (eval mode), metric history, final metrics, folder."""

    config: TrainConfig
    model: nn.Module
    history: list
    metrics: dict
    path: Path
    steps_run: int = 0  # optimizer steps taken by the call that returned this (0: loaded)


def is_complete(path) -> bool:
    """Whether a run folder holds a finished run (metrics.json written after training)."""
    path = Path(path)
    return (path / "metrics.json").exists() and (path / CHECKPOINT).exists()


def load_run(path) -> Run:
    """Load a finished run folder (model from checkpoint.pt, JSON files)."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} holds no finished run (no metrics.json/checkpoint.pt); "
                                f"train it with fatlib.runs.load_or_train(config)")
    cfg, model = load_model(path / CHECKPOINT)
    return Run(cfg, model, _read_json(path / "history.json"), _read_json(path / "metrics.json"), path)


def load_or_train(config: TrainConfig, *, progress: bool = False, **train_kw) -> Run:
    """The finished run of `config`: loaded from its folder if complete, else trained (resuming).

    Args:
        config: the TrainConfig; its hash names the folder under runs_dir().
        progress: tqdm bar while training.
        train_kw: passed to fatlib.train.train (e.g. device, until_epoch).
    Returns:
        Run(config, model, history, metrics, path, steps_run); steps_run == 0 when loaded.
    """
    path = run_path(config)
    if is_complete(path):
        run = load_run(path)
        if run.config != config:
            raise ValueError(f"run folder {path} holds config {run.config.hash()}, not {config.hash()}")
        return run
    if is_main():
        _ensure_runs_dir()
        _write_json(path / "config.json", config.to_dict())
    result = train(config, path, progress=progress,
                   on_record=lambda history: _write_json(path / "history.json", history), **train_kw)
    if is_main():
        _write_json(path / "history.json", result.history)
        if result.complete:
            _write_json(path / "metrics.json", result.metrics)
    return Run(config, result.model, result.history, result.metrics, path, result.steps_run)


def configs_dir() -> Path:
    """<repo>/data/configs: the configs of records that are long to make (one JSON per name)."""
    return REPO / "data" / "configs"


def recipe(name: str) -> TrainConfig:
    """The TrainConfig kept as data/configs/<name>.json (make its record with
    ``python -m fatlib train --config data/configs/<name>.json --record <name>``)."""
    path = configs_dir() / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in configs_dir().glob("*.json"))
        raise FileNotFoundError(f"no config {name!r} in {configs_dir()}; configs: {known}")
    return TrainConfig.from_json(path.read_text())


def record_or_run(config: TrainConfig, record: str, *, use_record: bool = True,
                  **train_kw) -> tuple["Run | Record", str]:
    """The record `record` if it holds exactly `config`, else the run of `config`.

    The book's pages use it to show a kept run when their parameters are the record's and
    to train (or load from the run cache) otherwise, so that a changed parameter is never
    answered with a record made for other settings.
    Args:
        config: the TrainConfig wanted.
        record: the name of the record under records_dir() that may hold it.
        use_record: False: never take the record (always load_or_train).
        train_kw: passed to load_or_train.
    Returns:
        (Record or Run, source): source is "record <name>" or "this execution (run <hash>)".
    """
    if use_record and (records_dir() / record / "config.json").exists():
        rec = load_record(record)
        if rec.config == config:
            return rec, f"record {record}"
    return load_or_train(config, **train_kw), f"this execution (run {config.hash()})"


# ----------------------------------------------------------------------------- records

def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "fatlib"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + (UNCOMMITTED if dirty.stdout.strip() else "")


UNCOMMITTED = "+uncommitted fatlib changes"


def committed_code() -> str:
    """The git commit that fatlib/ runs from, refusing an uncommitted fatlib/.

    A record must be rebuildable from a commit of this repository (issue: records only from
    committed code), so save_record calls this before writing anything.
    Raises:
        RuntimeError: no git checkout, or fatlib/ has changes not committed.
    """
    commit = _git_commit()
    if commit is None:
        raise RuntimeError(f"cannot tell which commit fatlib runs from ({REPO} is not a git checkout "
                           f"or git is missing): records are made only from committed code")
    if commit.endswith(UNCOMMITTED):
        raise RuntimeError("fatlib/ has uncommitted changes: commit them first (git commit), then "
                           "make the record again, so that it can be rebuilt from its commit")
    return commit


def machine() -> dict:
    """CPU model, core count, threads, OS, and the GPU if one is present."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "native_bf16": native_bf16_cpu(),
           "platform": platform.platform(), "python": platform.python_version()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Record:
    """A kept run: config, history, metrics and provenance, from data/records/<name>/."""

    name: str
    config: TrainConfig
    history: list
    metrics: dict
    provenance: dict
    path: Path

    def model(self) -> nn.Module:
        """The recorded final weights in a fresh model (eval mode); needs weights.pt."""
        weights = self.path / "weights.pt"
        if not weights.exists():
            raise FileNotFoundError(f"record {self.name!r} keeps no weights (model over "
                                    f"{MAX_RECORD_WEIGHTS // 2**20} MB); re-train with load_or_train")
        model = models.build(self.config.model, self.config.dataset, **self.config.model_kw)
        models.load_weights(model, torch.load(weights, map_location="cpu", weights_only=True),
                            what=f"record {self.name}")
        return model.eval()


def save_record(run: Run, name: str, *, notes: str = "", root=None) -> Record:
    """Copy a finished run into records_dir()/<name>/ with its provenance.

    Provenance: fatlib version, git commit, machine (CPU model, cores, GPU), torch version,
    wall time, UTC date, data sources, sha256 of the JSON files; the final weights are kept
    when smaller than 5 MB. Refuses (RuntimeError, see committed_code) when fatlib/ has
    uncommitted changes: a record names the commit that made it.
    Args:
        run: a finished Run (load_or_train's result).
        name: record name, a folder name (letters, digits, _ - .).
        notes: free text (how it was run).
        root: records folder (default records_dir()).
    """
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"record name must be letters, digits, '_', '-' or '.'; got {name!r}")
    if not run.metrics:
        raise ValueError("save_record needs a finished run (metrics missing); train it to the end")
    commit = committed_code()
    folder = Path(root or records_dir()) / name
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", run.config.to_dict())
    _write_json(folder / "history.json", run.history)
    _write_json(folder / "metrics.json", run.metrics)
    state = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
    size = sum(t.numel() * t.element_size() for t in state.values())
    if size < MAX_RECORD_WEIGHTS:
        torch.save(state, folder / "weights.pt")
    m = run.metrics
    provenance = {
        "fatlib_version": fatlib.__version__, "git_commit": commit,
        "torch_version": torch.__version__, "machine": machine(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": {"train": m.get("time_train_s"), "history_eval": m.get("time_eval_s"),
                        "final_eval": m.get("seconds")},
        "data_source": {"train": m.get("train_source"), "history": m.get("history_source"),
                        "final_eval": m.get("source")},
        "run_hash": run.config.hash(), "notes": notes,
        "sha256": {f: _sha256(folder / f) for f in RECORD_FILES},
    }
    _write_json(folder / "provenance.json", provenance)
    return load_record(name, root=root)


def load_record(name: str, *, root=None) -> Record:
    """Read records_dir()/<name>/ (config, history, metrics, provenance)."""
    folder = Path(root or records_dir()) / name
    if not (folder / "config.json").exists():
        known = sorted(p.name for p in folder.parent.glob("*") if (p / "config.json").exists())
        raise FileNotFoundError(f"no record {name!r} in {folder.parent}; records: {known}")
    return Record(name, TrainConfig.from_dict(_read_json(folder / "config.json")),
                  _read_json(folder / "history.json"), _read_json(folder / "metrics.json"),
                  _read_json(folder / "provenance.json"), folder)


@dataclass
class Verification:
    """Outcome of verify_record: ok, and what disagreed."""

    name: str
    ok: bool
    mismatches: list = field(default_factory=list)
    compared: int = 0

    def __bool__(self):
        return self.ok


# Statistics of sign(gradient) perturbations: a near-zero gradient coordinate flips sign under
# another CPU's rounding (thread count, vector width), which moves them by about 1e-2 after a
# hundred steps while losses still agree to 1e-3.
SIGN_SENSITIVE = ("cos_fgsm_pgd", "grad_alignment")


def _close(a, b, key: str) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], key) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if key.endswith("_acc"):
            tol = 0.51
        elif key in SIGN_SENSITIVE:
            tol = 0.02
        else:
            tol = 1e-3 * max(1.0, abs(a), abs(b))
        return abs(a - b) <= tol
    return a == b


def verify_record(name: str, *, root=None, device: str = "cpu") -> Verification:
    """Re-run the first evaluation interval of a record's config and compare with its history.

    Also checks the sha256 of the record's JSON files against its provenance. Accuracies
    must agree within half a percentage point, the sign-sensitive statistics
    (``SIGN_SENSITIVE``) within 0.02, other numbers within a relative 1e-3 (all identical
    on the machine that made the record); timings are not compared.
    Returns:
        Verification(name, ok, mismatches, compared) (truthy when ok).
    """
    rec = load_record(name, root=root)
    bad = [f"{f}: sha256 differs from provenance.json" for f in RECORD_FILES
           if rec.provenance.get("sha256", {}).get(f) != _sha256(rec.path / f)]
    if len(rec.history) < 2:
        return Verification(name, False, bad + ["history has fewer than 2 records"])
    steps = rec.history[1]["iteration"]
    rerun = train(rec.config, None, max_steps=steps, device=device).history[:2]
    compared = 0
    for old, new in zip(rec.history[:2], rerun):
        for key in sorted(old):  # the recorded keys (later fatlib versions may add more)
            if key.startswith("time_"):
                continue
            compared += 1
            if not _close(old.get(key), new.get(key), key):
                bad.append(f"iteration {old.get('iteration')}: {key} recorded {old.get(key)!r}, "
                           f"re-run {new.get(key)!r}")
    return Verification(name, not bad, bad, compared)

