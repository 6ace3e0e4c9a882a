"""The run store and records: the only module (with fatlib.book) that knows the disk layout.

A run folder is named by its config hash, under ``$FATLIB_RUNS_DIR`` (default
``<repo>/runs/``, which holds a ``.gitignore`` so it never enters git)::

    runs/<hash>/config.json  history.json  metrics.json  checkpoint.pt

A record is a finished run kept in the repository with its provenance, so the book can
show it without re-training (``data/records/<name>/``)::

    config.json  history.json  metrics.json  provenance.json  [weights.pt if < 5 MB]

The record queue (``data/record_queue.json``, ``python -m fatlib records status|run``) lists
the records the book needs that take long to make; ``run_queue`` trains the missing ones epoch
by epoch (resumable), within a time budget, and saves each as a record from committed code.
Its evaluation entries attack an existing record (AutoAttack on 1,000 test images) and write
the result next to the record's files, which they leave as they are::

    data/records/<name>/autoattack_standard_1000.json    (record_evaluation reads it)
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fatlib
from fatlib import data, evaluate, models
from fatlib.devices import derived_seed, seeded
from fatlib.threat import ThreatModel
from fatlib.train import (CHECKPOINT, NonFiniteLoss, TrainConfig, load_checkpoint, load_model,
                          native_bf16_cpu, resolve_device, resolve_precision, train)

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
    """True unless this is a non-zero rank of DDP: of an initialised process group, or, before
    the group is joined, of the RANK that torchrun gives each process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (tmp + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    return json.loads(Path(path).read_text())


def _utc_date() -> str:
    """Now, in UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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


def is_record_name(name) -> bool:
    """Whether `name` can name a record folder: a non-empty string of letters, digits, _ - ."""
    return isinstance(name, str) and bool(name) and all(c.isalnum() or c in "_-." for c in name)


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
    if not is_record_name(name):
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
        "date_utc": _utc_date(),
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


def sanity_report(item: "Run | Record") -> list | None:
    """The cheap sanity checks of a finished run or record, as fatlib.sanity.Check objects.

    Taken from its final metrics (``fatlib.train.final_evaluation`` stores them); a run or
    record made before that computes them here on its model and the first SANITY_N test
    images, at its threat model.
    Returns:
        list of Check, or None for a record that keeps no weights and stored no checks.
    """
    from fatlib import sanity
    from fatlib.train import SANITY_N, sanity_checks

    stored = (item.metrics or {}).get("sanity")
    if stored is None:
        if isinstance(item, Record) and not (item.path / "weights.pt").exists():
            return None
        model = item.model() if isinstance(item, Record) else item.model
        images, labels = data.load(item.config.dataset, "test", n=SANITY_N)
        stored = sanity_checks(model, item.config, images, labels, device="cpu")
    return [sanity.Check(**c) for c in stored]


def sanity_summary(items) -> list:
    """One Check per sanity check over several runs or records: passed only if it passed on all.

    For a page's run card (``fatlib.book.run_card(..., sanity=sanity_summary(runs))``): the
    message says on how many it passed and, for a failure, on which (record name or run
    hash) and what was found there.
    """
    from fatlib import sanity

    reports = {_label(it): sanity_report(it) for it in items}
    missing = sorted(k for k, v in reports.items() if v is None)
    found = {k: v for k, v in reports.items() if v is not None}
    out = []
    for name in dict.fromkeys(c.name for checks in found.values() for c in checks):
        failed = {k: c for k, checks in found.items() for c in checks if c.name == name and not c.passed}
        message = f"passed on {len(found) - len(failed)} of {len(found)}"
        if failed:
            first = next(iter(failed))
            message += f"; failed on {', '.join(failed)} ({first}: {failed[first].message})"
        out.append(sanity.Check(name, not failed, message))
    if missing:
        out.append(sanity.Check("sanity_available", False,
                                f"no weights kept, no stored checks: {', '.join(missing)}"))
    return out


def _label(item) -> str:
    return item.name if isinstance(item, Record) else f"run {item.config.hash()}"


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


# relative tolerance of the other numbers: fp32 re-runs agree to 1e-3; bf16 arithmetic (8-bit
# mantissa, unit roundoff 2^-8 = 3.9e-3) in another thread count drifts more over an epoch (a
# width-16 PreAct ResNet-18 record re-run with 1 thread instead of 2: up to 2.9e-3)
RELATIVE_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-2, "fp16": 1e-2}
# accuracies (points): fp32 re-runs agree to one image; a bf16 re-run drifts by a few of the
# history's 500 images (the same record: 22.8% recorded, 22.0% re-run)
ACCURACY_TOLERANCE = {"fp32": 0.51, "bf16": 2.0, "fp16": 2.0}
# another CPU or thread count sums in another order: over a first interval of training, fp32
# losses drift by more than 1e-3 (wong2020_mnist_pgd40_reduced, made on an AMD EPYC with 1
# thread, re-run on an Intel Xeon with 2: fgsm_loss 3.2987 recorded, 3.3116 re-run)
OTHER_MACHINE_RELATIVE_TOLERANCE = 1e-2


def _same_arithmetic(made_on: dict) -> bool:
    """Whether this machine has the CPU model and torch thread count a record was made with."""
    here = machine()
    return (made_on.get("cpu"), made_on.get("torch_threads")) == (here["cpu"], here["torch_threads"])


def _close(a, b, key: str, rel: float = 1e-3, acc: float = 0.51) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], key, rel, acc) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if key.endswith("_acc"):
            tol = acc
        elif key in SIGN_SENSITIVE:
            tol = 0.02
        else:
            tol = rel * max(1.0, abs(a), abs(b))
        return abs(a - b) <= tol
    return a == b


def unverifiable_here(name: str, *, root=None, device: str = "cpu") -> str | None:
    """Why this machine cannot re-run a record in the precision that made it, or None.

    A record trained with precision 'auto' in bf16 re-runs in fp32 on a CPU without native
    bf16 (and emulated bf16 is ~13x slower): such a re-run tests other arithmetic."""
    rec = load_record(name, root=root)
    made = rec.metrics.get("precision", "fp32")
    here = resolve_precision(rec.config.precision, torch.device(device))
    if made != here:
        return (f"record {name} was trained in {made}; this machine would re-run it in {here} "
                f"(verify it on a machine with native {made})")
    return None


def verify_record(name: str, *, root=None, device: str = "cpu") -> Verification:
    """Re-run the first evaluation interval of a record's config and compare with its history.

    Also checks the sha256 of the record's JSON files against its provenance. Accuracies
    must agree within ``ACCURACY_TOLERANCE`` points (half a point in fp32), the
    sign-sensitive statistics (``SIGN_SENSITIVE``) within 0.02, other numbers within the
    relative tolerance of the record's precision (``RELATIVE_TOLERANCE``: 1e-3 in fp32,
    identical on the machine that made the record with its thread count; at least
    ``OTHER_MACHINE_RELATIVE_TOLERANCE`` on another CPU model or thread count); timings are
    not compared. Check
    :func:`unverifiable_here` first: a record made in bf16 needs a machine with native bf16.
    Returns:
        Verification(name, ok, mismatches, compared) (truthy when ok).
    """
    rec = load_record(name, root=root)
    made = rec.metrics.get("precision", "fp32")
    rel, acc = RELATIVE_TOLERANCE.get(made, 1e-3), ACCURACY_TOLERANCE.get(made, 0.51)
    if not _same_arithmetic(rec.provenance.get("machine", {})):
        rel = max(rel, OTHER_MACHINE_RELATIVE_TOLERANCE)
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
            if not _close(old.get(key), new.get(key), key, rel, acc):
                bad.append(f"iteration {old.get('iteration')}: {key} recorded {old.get(key)!r}, "
                           f"re-run {new.get(key)!r}")
    return Verification(name, not bad, bad, compared)



# ----------------------------------------------------------------------------- the record queue
#
# data/record_queue.json: a JSON list, in priority order, of training entries
#   {"name": record name, "config": TrainConfig dict | "recipe": data/configs/<name>.json stem,
#    "notes": provenance notes, "needs": optional "native_bf16" (paper-scale runs)}
# and evaluation entries, an attack on the first n test images of a record a training entry makes
#   {"name": entry name, "evaluate": {"record": record name, "attack": "autoattack",
#    "version": "standard" | "plus" | "rand", "n": test images}, "notes": provenance notes}.
# `python -m fatlib records status` shows where each entry stands; `records run` makes the
# missing records (run_queue). A run folder the queue trains holds queue.json (the commit that
# started it); progress is logged to runs_dir()/record_queue.log.
# An evaluation runs once its record is made (by the queue, with its entry's config, from a clean
# commit) and writes data/records/<record>/<attack>_<version>_<n>.json (record_evaluation): the
# accuracies in percent under clean, pgd (the record's final PGD-K-R again, with the same random
# draws), autoattack and worst_case (clean & pgd & autoattack per image), n, the test images'
# source, seconds, the reference's version, seed, flags and log, the record's run hash and commit,
# and the commit, machine and date of the evaluation. The record's own files are not touched; the
# file is written at the end (atomically): a killed evaluation leaves nothing and starts over.

QUEUE_NEEDS = ("native_bf16",)
QUEUE_MARK = "queue.json"
QUEUE_LOG = "record_queue.log"
CLEAN_COMMIT = re.compile(r"[0-9a-f]{40}")
ROBUST_GUESS = 0.5  # cost model: share of test images a PGD restart after the first still attacks
EVAL_ATTACKS = ("autoattack",)
# cost model of AutoAttack, rough: image-gradients (forward-backward passes of one image) per image
# classified correctly (APGD-CE, 100 iterations; 'plus': 5 restarts; 'rand': EOT over 20 draws) and
# more per image still robust after it. 'standard': APGD-T and FAB-T, 9 targets x 100 iterations,
# and Square's 5,000 queries; timed on 32 test images of rs16_wong2020_fgsm_zero_s0 (12 robust, one
# thread, AMD EPYC) an APGD-T iteration cost 1.15 APGD-CE iterations, a FAB-T one 2.5, a Square
# query 0.38: 5,200 per robust image ('plus' adds restarts and untargeted FAB, 'rand' APGD-DLR).
AUTOATTACK_GRADS = {"standard": (100, 5000), "plus": (500, 12000), "rand": (2000, 2000)}
EVAL_SCHEMA = {  # key of an entry's "evaluate": (valid value?, what it must be)
    "record": (is_record_name, "a record name (letters, digits, '_', '-' or '.')"),
    "attack": (lambda v: v in EVAL_ATTACKS, f"one of {EVAL_ATTACKS}"),
    "version": (lambda v: v in evaluate.AUTOATTACK_VERSIONS, f"one of {evaluate.AUTOATTACK_VERSIONS}"),
    "n": (lambda v: type(v) is int and v >= 1, "a whole number of test images, at least 1"),
}


def queue_file() -> Path:
    """<repo>/data/record_queue.json: the book's record queue."""
    return REPO / "data" / "record_queue.json"


@dataclass
class QueueEntry:
    """One record of the queue: its name, config, provenance notes and what it needs to run."""

    name: str
    config: TrainConfig
    notes: str = ""
    needs: str | None = None


@dataclass
class EvalEntry:
    """One evaluation of the queue: `attack` on the first n test images of the record `record`."""

    name: str
    record: str
    config: TrainConfig | None = None  # the record's config, as its training entry asks
    attack: str = "autoattack"
    version: str = "standard"
    n: int = 1000
    notes: str = ""

    @property
    def file(self) -> str:
        """The name of the file it writes in the record's folder."""
        return evaluation_file(self.attack, self.version, self.n)


def evaluation_file(attack: str, version: str, n: int) -> str:
    """'<attack>_<version>_<n>.json': an evaluation's file in its record's folder."""
    return f"{attack}_{version}_{n}.json"


def queue_items(path=None) -> list[QueueEntry | EvalEntry]:
    """Every entry of a record queue file, training and evaluation, in priority order, validated.

    Args:
        path: the queue JSON file (default queue_file()).
    Returns:
        QueueEntry and EvalEntry objects; an EvalEntry carries its record's config.
    Raises:
        ValueError: not a list, an entry with unknown keys, with not exactly one of
            config/recipe/evaluate, with an invalid TrainConfig, record name or evaluation, a
            name used twice, an evaluation of a record no training entry makes, or two
            evaluations that would write the same file.
    """
    path = Path(path or queue_file())
    text = path.read_text()
    key = (str(path.resolve()), hashlib.sha256(text.encode()).hexdigest())
    if key not in _QUEUE_READS:  # validating 170 entries takes ~0.5 s; the pages ask often
        _QUEUE_READS.clear()
        _QUEUE_READS[key] = _validated_queue(json.loads(text), path)
    return list(_QUEUE_READS[key])


_QUEUE_READS: dict = {}  # (path, sha256 of its text) -> its validated entries (queue_items)


def _validated_queue(items, path: Path) -> list[QueueEntry | EvalEntry]:
    """queue_items of a queue file's parsed JSON (its docstring gives the checks)."""
    if not isinstance(items, list):
        raise ValueError(f"{path}: a record queue is a JSON list of entries, not {type(items).__name__}")
    entries = [_queue_entry(item, f"{path} entry {i}") for i, item in enumerate(items)]
    _no_repeats([e.name for e in entries], f"{path}: record names used twice")
    training = {e.name: e.config for e in entries if isinstance(e, QueueEntry)}
    evaluations = [e for e in entries if isinstance(e, EvalEntry)]
    for e in evaluations:
        if e.record not in training:
            raise ValueError(f"{path} ({e.name}): evaluates record {e.record!r}, which no training "
                             f"entry of the queue makes")
        e.config = training[e.record]
    _no_repeats([f"{e.record}/{e.file}" for e in evaluations], f"{path}: evaluations written twice")
    return entries


def _no_repeats(values: list, message: str) -> None:
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{message}: {twice}")


def load_queue(path=None) -> list[QueueEntry]:
    """The training entries of a record queue file, in priority order (see queue_items, which
    validates the whole file and also gives the evaluation entries).

    Args:
        path: the queue JSON file (default queue_file()).
    Raises:
        ValueError: as queue_items.
    """
    return [e for e in queue_items(path) if isinstance(e, QueueEntry)]


def queue_entry(name: str, path=None) -> QueueEntry:
    """The entry of the record queue named `name`.

    Raises:
        ValueError: no entry of the queue has that name.
    """
    entries = {e.name: e for e in load_queue(path)}
    if name not in entries:
        raise ValueError(f"{name!r} is not in the record queue ({path or queue_file()}): add it "
                         f"there, or use one of the names that `python -m fatlib records status` lists")
    return entries[name]


def record_with_config(name: str, config: TrainConfig) -> Record | None:
    """The record `name` if it exists and was made with exactly `config`, else None."""
    try:
        found = load_record(name)
    except FileNotFoundError:
        return None
    return found if found.config == config else None


def _queue_entry(item, where: str) -> QueueEntry | EvalEntry:
    """One queue item (a dict) as a QueueEntry or an EvalEntry, or a ValueError that names it."""
    keys = {"name", "config", "recipe", "evaluate", "notes", "needs"}
    if not isinstance(item, dict) or "name" not in item or set(item) - keys:
        raise ValueError(f"{where}: an entry is an object with 'name', one of 'config', 'recipe' or "
                         f"'evaluate', and optional 'notes' and 'needs'; got {str(item)[:200]}")
    name = item["name"]
    if not is_record_name(name):
        raise ValueError(f"{where}: record name must be letters, digits, '_', '-' or '.'; got {name!r}")
    if sum(k in item for k in ("config", "recipe", "evaluate")) != 1:
        raise ValueError(f"{where} ({name}): give exactly one of 'config', 'recipe' and 'evaluate'")
    if "evaluate" in item:
        return _evaluation_entry(item, f"{where} ({name})")
    if item.get("needs") not in (None, *QUEUE_NEEDS):
        raise ValueError(f"{where} ({name}): needs must be one of {QUEUE_NEEDS}; got {item['needs']!r}")
    try:
        config = recipe(item["recipe"]) if "recipe" in item else TrainConfig.from_dict(item["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where} ({name}): {e}") from None
    return QueueEntry(name, config, item.get("notes", ""), item.get("needs"))


def _evaluation_entry(item: dict, where: str) -> EvalEntry:
    """An evaluation item as an EvalEntry (its config is set by queue_items), or a ValueError."""
    spec = item["evaluate"]
    if not isinstance(spec, dict) or set(spec) != set(EVAL_SCHEMA):
        raise ValueError(f"{where}: 'evaluate' is an object with exactly the keys "
                         f"{list(EVAL_SCHEMA)}; got {str(spec)[:200]}")
    for key, (valid, expected) in EVAL_SCHEMA.items():
        if not valid(spec[key]):
            raise ValueError(f"{where}: evaluate.{key} must be {expected}; got {spec[key]!r}")
    if "needs" in item:
        raise ValueError(f"{where}: 'needs' is for training entries, not evaluations")
    return EvalEntry(item["name"], spec["record"], None, spec["attack"], spec["version"], spec["n"],
                     item.get("notes", ""))


def _record_state(entry: QueueEntry) -> tuple[str | None, str | None]:
    """('done', commit) for a record of this config from a clean commit; ('differs', hash) for a
    record of another config; (None, commit or None) when there is none or its commit is not clean."""
    folder = records_dir() / entry.name
    if not (folder / "provenance.json").exists():
        return None, None
    try:
        config = TrainConfig.from_dict(_read_json(folder / "config.json"))
    except (ValueError, TypeError, OSError):
        return "differs", "unreadable config.json"
    if config != entry.config:
        return "differs", config.hash()
    commit = _read_json(folder / "provenance.json").get("git_commit") or ""
    return ("done" if CLEAN_COMMIT.fullmatch(commit) else None), commit


def _checkpoint_state(path: Path) -> dict:
    """The training state of a run folder's checkpoint (passes_done, step, times, ...); {} if none."""
    try:
        return load_checkpoint(Path(path) / CHECKPOINT)["state"]
    except FileNotFoundError:
        return {}


def _can_run_here(entry: QueueEntry, state: dict | None = None) -> bool:
    """Whether this machine may run the entry: 'native_bf16', or a run in progress trained in
    bf16 (its checkpoint's state, read here when not given), needs a CPU with it or a GPU."""
    if state is None:
        state = _checkpoint_state(run_path(entry.config))
    if entry.needs != "native_bf16" and state.get("precision") != "bf16":
        return True
    return native_bf16_cpu() or resolve_device(entry.config.device).type == "cuda"


def _started_by(path: Path) -> str | None:
    """The commit that started a run folder under the queue (its queue.json), if any."""
    mark = Path(path) / QUEUE_MARK
    return _read_json(mark).get("commit") if mark.exists() else None


# --- estimates of the time left

def _pass_seconds(state: dict) -> float:
    """Seconds per pass so far (attacks, updates, history evaluation) of a checkpoint's state."""
    return sum(state["times"].values()) / state["passes_done"]


def _record_times(entry: QueueEntry, name: str | None = None,
                  config: TrainConfig | None = None) -> dict | None:
    """Seconds per pass (training + history evaluation) and of the final evaluation, from the
    provenance of an existing record of this name (e.g. an older one being re-made), or of the
    record `name` of `config`, and the machine that made it."""
    path = records_dir() / (name or entry.name) / "provenance.json"
    if not path.exists():
        return None
    prov = _read_json(path)
    wall = prov.get("wall_time_s") or {}
    if wall.get("train") is None:
        return None
    per_pass = (wall["train"] + (wall.get("history_eval") or 0.0)) / (config or entry.config).passes
    return {"pass_s": per_pass, "final_s": wall.get("final_eval") or 0.0,
            "machine": prov.get("machine") or {}}


# TrainConfig fields that do not change what a training step or an evaluation computes (the
# radius, step sizes, seeds, schedule, number of epochs, the ZeroGrad quantile, clipping):
# records that differ from an entry only in these cost about as much per pass.
COST_NEUTRAL_FIELDS = (
    "eps", "alpha", "fgsm_init", "pgd_alpha", "pgd_random_start", "pgd_corners", "ga_lambda",
    "zg_q", "rollback_qs", "epochs", "optimizer", "momentum", "nesterov", "lr_max",
    "lr_schedule", "lr_peak", "lr_drops", "lr_factor", "weight_decay", "eps_warmup_epochs",
    "alpha_warmup_epochs", "grad_clip", "grad_clip_mode", "seed", "early_stop",
    "early_stop_rule", "eval_pgd_alpha", "final_pgd_alpha")


def _similar_record_times(entry: QueueEntry) -> dict | None:
    """_record_times of a record whose config equals the entry's but for COST_NEUTRAL_FIELDS,
    with its name and machine: one made on a machine like this one (the same native bf16,
    then the same torch threads) before others, then the first by name; None if there is none."""
    def costly(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in COST_NEUTRAL_FIELDS}

    wanted, here, found = costly(entry.config.to_dict()), machine(), []
    for path in sorted(records_dir().glob("*/config.json")):
        config = _read_json(path)
        times = costly(config) == wanted and _record_times(entry, path.parent.name,
                                                           TrainConfig.from_dict(config))
        if times:
            alike = tuple(times["machine"].get(k) == here[k] for k in ("native_bf16",
                                                                      "torch_threads"))
            found.append((alike, {**times, "name": path.parent.name}))
    return max(found, key=lambda f: f[0])[1] if found else None


def measure_costs(config: TrainConfig, steps: int = 2) -> dict:
    """Seconds of one training step and of one evaluation image-gradient of `config`, timed here.

    Training: fatlib.train.train on a copy of the config with (steps + 1) minibatches and no
    test evaluation, stopped after 1 (once to warm up, once timed) and after 1 + steps
    optimizer steps; the difference over `steps` is one step (set-up and the slower first step
    cancel). Evaluation: three fp32 forward-backward passes of 64 test images in eval mode
    (after one untimed), per image: the unit of the cost of FGSM and PGD evaluation.
    Wall-clock times: on a machine shared with other jobs they include the sharing, as the
    queue's runs will.
    Returns:
        {"step_s": seconds per optimizer step, "image_grad_s": seconds per image-gradient}.
    """
    probe = config.replace(n_train=(steps + 1) * config.batch_size, n_eval=0, final_n_eval=0,
                           early_stop=False, rollback_qs=())

    def wall(k: int) -> float:
        t0 = time.perf_counter()
        train(probe, None, max_steps=k)
        return time.perf_counter() - t0

    wall(1)  # warm-up: first data load, kernel selection
    step_s = max(wall(1 + steps) - wall(1), 0.0) / steps
    return {"step_s": step_s, "image_grad_s": _image_grad_seconds(config)}


def _image_grad_seconds(config: TrainConfig) -> float:
    """Seconds per image of an fp32 forward-backward pass (eval mode, batches of 64) of a fresh
    model of `config`, timed here over three passes after one untimed (see measure_costs)."""
    model = models.build(config.model, config.dataset, **config.model_kw).eval()
    images, labels = data.load(config.dataset, "test", n=64)
    x = data.to_float(images).requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    t0 = time.perf_counter()
    for _ in range(3):
        torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    return (time.perf_counter() - t0) / (3 * len(labels))


def cost_model_seconds(config: TrainConfig, costs: dict, passes_done: int = 0) -> float:
    """Seconds left for a run from measured unit costs (measure_costs): an upper-bound model.

    passes left x (steps per pass x step_s + history records per pass x n_eval x (2 +
    eval_pgd_steps x eval_pgd_restarts) x image_grad_s) + final_n_eval x (2 + final_pgd_steps x
    (1 + (final_pgd_restarts - 1) x ROBUST_GUESS)) x image_grad_s: clean and FGSM cost one
    image-gradient each, a PGD step one; PGD stops early on misclassified images, which the
    model ignores except for the final restarts (taken to attack half the images).
    """
    c = config
    n_train = min(c.n_train or math.inf, data.DATASETS[c.dataset].split_sizes[0])
    steps_per_pass = math.ceil(n_train / c.batch_size) * c.replays
    records_per_pass = 1 if not c.eval_every else steps_per_pass / c.eval_every
    history = records_per_pass * c.n_eval * (2 + c.eval_pgd_steps * c.eval_pgd_restarts)
    final = c.final_n_eval * (2 + c.final_pgd_steps * (1 + (c.final_pgd_restarts - 1) * ROBUST_GUESS))
    left = max(c.passes - passes_done, 0)
    return left * (steps_per_pass * costs["step_s"] + history * costs["image_grad_s"]) + \
        final * costs["image_grad_s"]


def estimate_seconds(entry: QueueEntry, state: dict | None = None, *,
                     measure: bool = False) -> tuple[float | None, str]:
    """Seconds left to make an entry's record on this machine, and how that was estimated.

    In order: (1) a checkpoint in the run folder (state: its training state): its own timers'
    seconds per pass (attacks, updates, history evaluation) times the passes left, plus the
    final evaluation's time of (2) when there is one; (2) an existing record of that name (an
    older one being re-made): its provenance wall times (train + history_eval per pass, and
    final_eval), not scaled, with its CPU named when it is not this machine's; (3) with measure,
    cost_model_seconds of measure_costs timed here; (4) a similar record (same config but for
    COST_NEUTRAL_FIELDS): its wall time per pass times the entry's passes, plus its final
    evaluation. Else (None, 'unknown').
    Returns:
        (seconds or None, a few words on the basis).
    """
    passes, state = entry.config.passes, state or {}
    done, rec = state.get("passes_done", 0), _record_times(entry)
    final = rec["final_s"] if rec else 0.0
    if done:
        extra = "" if rec or not entry.config.final_n_eval else ", final evaluation not included"
        return _pass_seconds(state) * (passes - done) + final, f"checkpoint timers{extra}"
    if rec:
        cpu = rec["machine"].get("cpu")
        other = "" if cpu == machine()["cpu"] else f" made on {cpu}"
        return rec["pass_s"] * passes + final, f"old record's wall time{other}"
    if measure:
        return cost_model_seconds(entry.config, measure_costs(entry.config)), "measured step cost"
    similar = _similar_record_times(entry)
    if similar:
        where, here = similar["machine"], machine()
        other = "" if (where.get("cpu"), where.get("native_bf16")) == (here["cpu"], here[
            "native_bf16"]) else (f", made on {where.get('cpu')} with"
                                  f"{'' if where.get('native_bf16') else 'out'} native bf16")
        return (similar["pass_s"] * passes + similar["final_s"],
                f"wall time per pass of the similar record {similar['name']}{other}")
    return None, "unknown"


# --- evaluation entries

def evaluation_entry(record: str, attack: str = "autoattack", version: str = "standard",
                     n: int = 1000, path=None) -> EvalEntry:
    """The evaluation entry of the queue that runs `attack` (`version`) on n test images of
    `record` (the pages name it in a queued row while its file is not written).

    Raises:
        ValueError: the queue has no such evaluation.
    """
    found = [e for e in queue_items(path) if isinstance(e, EvalEntry)
             and (e.record, e.attack, e.version, e.n) == (record, attack, version, n)]
    if not found:
        raise ValueError(f"the record queue ({path or queue_file()}) has no {attack} ({version}) "
                         f"evaluation of {record!r} on {n} test images: add an entry with "
                         f'"evaluate": {{"record": "{record}", "attack": "{attack}", ...}}')
    return found[0]


def _made_record(entry: EvalEntry) -> Record | None:
    """The record an evaluation entry attacks, when the queue has made it: with the config its
    training entry asks for (record_with_config), from a clean commit; else None."""
    rec = record_with_config(entry.record, entry.config)
    clean = rec is not None and CLEAN_COMMIT.fullmatch(rec.provenance.get("git_commit") or "")
    return rec if clean else None


AUTOATTACK_1000 = dict(attack="autoattack", version="standard", n=1000)  # the book's AutoAttack


def record_evaluation(record: str, attack: str = "autoattack", version: str = "standard",
                      n: int = 1000, *, root=None) -> dict | None:
    """The evaluation of a record that the queue wrote (<record>/<attack>_<version>_<n>.json).

    For the pages: golgooni2021 Table 5 and the cost board read AutoAttack on record-scale
    models from it (the file's fields: see the comment on the record queue in fatlib/runs.py).
    Args:
        record: the record's name; attack, version, n: as in the queue's evaluation entry.
        root: records folder (default records_dir()).
    Returns:
        the dict (accuracy in percent per attack: clean, pgd, autoattack, worst_case), or None
        when there is none, or it was made of an older record of that name (its run hash or
        commit is not the record's now: a re-made record is evaluated again).
    """
    folder = Path(root or records_dir()) / record
    path = folder / evaluation_file(attack, version, n)
    if not path.exists() or not (folder / "provenance.json").exists():
        return None
    found, prov = _read_json(path), _read_json(folder / "provenance.json")
    same = (found.get("record_run_hash"), found.get("record_commit")) == \
        (prov.get("run_hash"), prov.get("git_commit"))
    return found if same else None


def _record_model(rec: Record) -> nn.Module:
    """A record's final weights: its weights.pt, else the finished run folder of its config."""
    return rec.model() if (rec.path / "weights.pt").exists() else load_run(run_path(rec.config)).model


def _pgd_grads(config: TrainConfig, n: int, clean: float, robust: float) -> float:
    """Image-gradients of clean + FGSM + PGD-K-R (early stop, the config's final settings) on n
    images with shares `clean` and `robust` (0-1) classified correctly before and after it: K
    steps for each image classified correctly, K more per further restart for each robust one."""
    c = config
    return n * (2 + c.final_pgd_steps * (clean + robust * (c.final_pgd_restarts - 1)))


def evaluation_seconds(entry: EvalEntry, record: Record, *,
                       measure: bool = False) -> tuple[float | None, str]:
    """Seconds an evaluation entry needs on this machine (a rough model), and its basis.

    Image-gradients: the PGD-K-R re-run (_pgd_grads) plus AutoAttack's AUTOATTACK_GRADS per
    image classified correctly and per robust image, with the shares of the record's final
    metrics (clean_acc, pgd_acc; 100% where missing). Seconds per image-gradient: with
    measure, timed here (_image_grad_seconds, a few seconds); else the record's final
    evaluation time (provenance) over its _pgd_grads, with its CPU named when not this one's.
    Returns:
        (seconds or None, a few words on the basis; 'unknown' without either timing).
    """
    m, cfg = record.metrics, entry.config
    clean, robust = ((100.0 if m.get(k) is None else m[k]) / 100 for k in ("clean_acc", "pgd_acc"))
    correct_grads, robust_grads = AUTOATTACK_GRADS[entry.version]
    grads = _pgd_grads(cfg, entry.n, clean, robust) + entry.n * (clean * correct_grads +
                                                                 robust * robust_grads)
    final_s = (record.provenance.get("wall_time_s") or {}).get("final_eval")
    if final_s and cfg.final_n_eval:
        cpu = (record.provenance.get("machine") or {}).get("cpu")
        other = "" if cpu == machine()["cpu"] else f" made on {cpu}"
        per_grad = final_s / _pgd_grads(cfg, cfg.final_n_eval, clean, robust)
        return grads * per_grad, f"rough AutoAttack cost model, record's final evaluation time{other}"
    if measure:
        return grads * _image_grad_seconds(cfg), "rough AutoAttack cost model, measured gradient cost"
    return None, "unknown"


def evaluate_record(entry: EvalEntry, commit: str, *,
                    run_autoattack=evaluate.run_autoattack) -> dict:
    """Run an evaluation entry on its record; write and return <record>/<attack>_<version>_<n>.json.

    Implements: the reference AutoAttack (Croce & Hein 2020; PyPI pyautoattack, as golgooni2021
    Table 5 uses it) at the record's threat model, and the record's final PGD-K-R again (its
    config's final_pgd_*, the same random stream: on the same n images it repeats the record's
    number), on the first n test images, in eval mode and fp32 on the config's device; the
    worst case is clean & pgd & autoattack per image. The record's own files are untouched;
    the file is written atomically at the end, so a killed evaluation simply starts over.
    Args:
        entry: an EvalEntry of the queue (queue_items) whose record is made.
        commit: the clean commit the code runs from (committed_code()).
        run_autoattack: evaluate.run_autoattack, or a stand-in with its signature and result
            (tests).
    Returns:
        the dict written (see the comment on the record queue; record_evaluation reads it).
    Raises:
        ValueError: the record is not made yet. FileNotFoundError: it keeps no weights and its
            run folder is gone, or the test images are not there.
    """
    rec = _made_record(entry)
    if rec is None:
        raise ValueError(f"{entry.name}: record {entry.record} is not made yet (records status)")
    cfg, device = rec.config, resolve_device(rec.config.device)
    model = _record_model(rec).to(device)
    images, labels, source = data.load_with_source(cfg.dataset, "test", n=entry.n)
    x, y, threat = data.to_float(images).to(device), labels.to(device), ThreatModel(cfg.norm, cfg.eps)
    t0 = time.perf_counter()
    with seeded(cfg.seed, "final"):  # the stream of fatlib.history.final_evaluation
        correct = evaluate.evaluate(model, x, y, threat, attacks=("clean", "pgd"),
                                    pgd_steps=cfg.final_pgd_steps,
                                    pgd_restarts=cfg.final_pgd_restarts, pgd_alpha=cfg.final_pgd_alpha)
    t1 = time.perf_counter()
    aa = run_autoattack(model, x, y, threat, version=entry.version,
                        seed=derived_seed(cfg.seed, entry.attack) % 2**31)
    t2 = time.perf_counter()
    correct.update(autoattack=aa.correct, worst_case=correct["clean"] & correct["pgd"] & aa.correct)
    alpha = "eps/4" if cfg.final_pgd_alpha is None else f"{cfg.final_pgd_alpha:.4g}"
    out = {"record": rec.name, "entry": entry.name, "attack": entry.attack, "version": entry.version,
           "n": len(labels), "norm": cfg.norm, "eps": cfg.eps,
           "accuracy": {k: evaluate.accuracy(v) for k, v in correct.items()},
           "pgd": f"PGD-{cfg.final_pgd_steps}-{cfg.final_pgd_restarts} (alpha {alpha})",
           "source": source, "seconds": {"clean_pgd": t1 - t0, "autoattack": t2 - t1},
           "reference": {"package": "pyautoattack", "package_version":
                         importlib.metadata.version("pyautoattack"), "seed": aa.seed,
                         "flags": aa.flags, "log": aa.log},
           "record_run_hash": rec.provenance.get("run_hash"),
           "record_commit": rec.provenance.get("git_commit"), "git_commit": commit,
           "fatlib_version": fatlib.__version__, "torch_version": torch.__version__,
           "machine": machine(), "device": str(device), "date_utc": _utc_date(), "notes": entry.notes}
    _write_json(rec.path / entry.file, out)
    return out


# --- status

@dataclass
class QueueStatus:
    """Where one queue entry stands, and an estimate of the time it still needs here."""

    entry: QueueEntry | EvalEntry
    state: str                  # done | differs | trained | in progress | not started |
                                # waiting for native bf16 | waiting for <record> (evaluations)
    passes_done: int = 0
    commit: str | None = None   # done: the record's commit; else the commit that started the run
    seconds_left: float | None = None
    basis: str = ""             # how seconds_left was estimated

    def line(self) -> str:
        """One line: name, state (with the commit or the epoch), estimated hours and basis."""
        passes = self.entry.config.passes
        what = {"done": f"done (commit {(self.commit or '')[:10]})",
                "differs": f"differs: record holds config {self.commit}",
                "trained": "trained, record not saved yet",
                "in progress": f"in progress at epoch {self.passes_done} of {passes}"
                               + (", final evaluation left" if self.passes_done >= passes
                                  else "")}.get(self.state, self.state)
        if self.state == "waiting for native bf16" and self.passes_done:
            what += f" (at epoch {self.passes_done} of {passes})"
        hours = ("unknown" if self.seconds_left is None else "0 h" if not self.seconds_left
                 else f"~{self.seconds_left / 3600:.2f} h")
        basis = f" ({self.basis})" if self.basis not in ("", "unknown") and self.seconds_left else ""
        return f"{self.entry.name:<46} {what:<42} {hours}{basis}"


def entry_status(entry: QueueEntry | EvalEntry, *, measure: bool = False) -> QueueStatus:
    """The QueueStatus of one entry: its record (done / differs), else its run folder's checkpoint
    (trained / in progress / not started; 'waiting for native bf16' where it cannot run here).

    A run folder that `records run` would start over (see _claim_run_folder) is estimated
    from the start.
    An evaluation entry (EvalEntry) is 'waiting for <record>' until its record is made (see
    _made_record), then 'not started' with evaluation_seconds, or 'done' (record_evaluation).
    Args:
        entry: a QueueEntry or an EvalEntry (queue_items).
        measure: time the config's steps here when nothing else gives an estimate (slow).
    """
    if isinstance(entry, EvalEntry):
        rec = _made_record(entry)
        if rec is None:
            return QueueStatus(entry, f"waiting for {entry.record}")
        done = record_evaluation(entry.record, entry.attack, entry.version, entry.n)
        if done:
            return QueueStatus(entry, "done", commit=done["git_commit"], seconds_left=0.0)
        seconds, basis = evaluation_seconds(entry, rec, measure=measure)
        return QueueStatus(entry, "not started", 0, None, seconds, basis)
    rec_state, rec_info = _record_state(entry)
    if rec_state is not None:
        return QueueStatus(entry, rec_state, entry.config.passes, rec_info, 0.0)
    path = run_path(entry.config)
    state = _checkpoint_state(path)
    done, started = state.get("passes_done", 0), _started_by(path)
    if is_complete(path):
        return QueueStatus(entry, "trained", done, started, 0.0, "saved by the next run")
    kind = "in progress" if done else "not started"
    if not _can_run_here(entry, state):
        kind = "waiting for native bf16"
    restarts = done and started != (_git_commit() or "").removesuffix(UNCOMMITTED)
    seconds, basis = estimate_seconds(entry, {} if restarts else state, measure=measure)
    if restarts:
        basis += "; its run folder is not from the queue at this commit: `records run` restarts it"
    return QueueStatus(entry, kind, done, started, seconds, basis)


def queue_status(path=None, *, measure: bool = False) -> list[QueueStatus]:
    """entry_status of every entry of a queue file (default queue_file()), in its order."""
    return [entry_status(e, measure=measure) for e in queue_items(path)]


def format_status(statuses: list[QueueStatus]) -> str:
    """The status lines, numbered, and a total: entries left and their estimated hours here
    (entries waiting for native bf16, which do not run on this machine, and evaluations waiting
    for their record are counted apart)."""
    lines = [f"{i:>3} {s.line()}" for i, s in enumerate(statuses, 1)]
    bf16 = sum(s.state == "waiting for native bf16" for s in statuses)
    record = sum(s.state.startswith("waiting for") for s in statuses) - bf16
    left = [s for s in statuses
            if s.state not in ("done", "differs") and not s.state.startswith("waiting for")]
    known = [s.seconds_left for s in left if s.seconds_left is not None]
    unknown = len(left) - len(known)
    lines.append(f"left: {len(left)} of {len(statuses)} entries, ~{sum(known) / 3600:.2f} h on this "
                 f"machine" + (f" (+ {unknown} not estimated: `records status --measure`)" if unknown
                               else "") + (f"; {bf16} waiting for native bf16" if bf16 else "")
                 + (f"; {record} evaluations waiting for their record" if record else ""))
    return "\n".join(lines)


# --- run

def _log(message: str) -> None:
    """Print a queue progress line (UTC time first) and append it to runs_dir()/record_queue.log."""
    now = datetime.datetime.now(datetime.timezone.utc)
    line = f"{now:%Y-%m-%d %H:%M:%S}Z {message}"
    print(line, flush=True)
    with open(_ensure_runs_dir() / QUEUE_LOG, "a") as f:
        f.write(line + "\n")


def _claim_run_folder(entry: QueueEntry, commit: str) -> Path:
    """The run folder of an entry, started by the queue at `commit` (its queue.json).

    A folder that the queue did not start, or started from another commit, is moved aside to
    runs_dir()/<hash>.moved-<UTC time>/ (nothing is deleted) and training starts over, so that
    every epoch of a record comes from the commit its provenance names.
    """
    path = run_path(entry.config)
    if path.exists() and _started_by(path) != commit:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{path.name}.moved-{stamp}")
        os.replace(path, aside)
        _log(f"{entry.name}: run folder {path} was not started by the queue at commit {commit[:10]}; "
             f"moved to {aside.name}, training starts over")
    if not (path / QUEUE_MARK).exists():
        _write_json(path / QUEUE_MARK, {"commit": commit, "record": entry.name,
                                        "started_utc": _utc_date()})
    return path


def _does_not_fit(need: float | None, deadline: float | None) -> str | None:
    """Why work expected to take `need` seconds would end after `deadline` (time.monotonic()),
    or None when it fits; work with no estimate fits."""
    if deadline is None or need is None or time.monotonic() + need <= deadline:
        return None
    return (f"it needs ~{need / 60:.1f} min, {max(deadline - time.monotonic(), 0) / 60:.1f} min of "
            f"the budget are left")


def _epoch_guess(entry: QueueEntry, state: dict) -> tuple[float | None, float]:
    """(seconds of the next epoch, seconds of the final evaluation) before any epoch ran in this
    call: the checkpoint's timers per pass, else an existing record's wall times (estimate_seconds)."""
    rec = _record_times(entry)
    final = rec["final_s"] if rec else 0.0
    if state.get("passes_done"):
        return _pass_seconds(state), final
    return (rec["pass_s"] if rec else None), final


def _train_epochs(entry: QueueEntry, path: Path, deadline: float | None) -> int:
    """Train an entry one epoch (pass) at a time with load_or_train(until_epoch) until its run is
    complete or the next epoch would end after `deadline` (time.monotonic()); returns epochs run.

    The next epoch is expected to take as long as the last one of this call (before the first:
    _epoch_guess; the last epoch adds the final evaluation's time where a record gives it); an
    epoch with no estimate at all is started.
    """
    cfg, trained = entry.config, 0
    state = _checkpoint_state(path)
    epoch_s, final_s = _epoch_guess(entry, state)
    while not is_complete(path):
        done = state.get("passes_done", 0)
        if done >= cfg.passes:  # trained; killed in the final evaluation: only that is left
            _log(f"{entry.name}: the final evaluation (resuming after epoch {done})")
            load_or_train(cfg)
            break
        need = None if epoch_s is None else epoch_s + final_s * (done + 1 >= cfg.passes)
        why = _does_not_fit(need, deadline)
        if why:
            _log(f"{entry.name}: stopping before epoch {done + 1} of {cfg.passes}: {why}")
            break
        resuming = " (resuming)" if done and not trained else ""
        _log(f"{entry.name}: epoch {done + 1} of {cfg.passes}{resuming}")
        t0 = time.monotonic()
        run = load_or_train(cfg, until_epoch=done + 1)
        epoch_s, trained = time.monotonic() - t0, trained + 1
        new = _checkpoint_state(path)
        if (new.get("step"), new.get("q_index")) == (state.get("step"), state.get("q_index")):
            raise RuntimeError(f"{entry.name}: an epoch of training made no progress (run {path})")
        state = new
        acc = run.history[-1].get("pgd_acc") if run.history else None
        _log(f"{entry.name}: epoch {state['passes_done']} of {cfg.passes} done in {epoch_s:.1f} s"
             + (f", PGD accuracy {acc:.1f}% on the history images" if acc is not None else ""))
    return trained


def _queue_evaluation(entry: EvalEntry, commit: str, deadline: float | None,
                      run_autoattack) -> dict:
    """Run one evaluation entry if its record is made, it is not done and it fits the budget
    (evaluation_seconds, measured here when nothing else estimates it): {"name", "result", "epochs"}."""
    out = {"name": entry.name, "epochs": 0}
    status = entry_status(entry, measure=True)
    if status.state == "done":
        return {**out, "result": "done"}
    if status.state != "not started":
        _log(f"{entry.name}: skipped: {status.state} (made by the queue with its entry's config)")
        return {**out, "result": f"skipped: {status.state}"}
    what = f"{entry.attack} ({entry.version}) on {entry.n} test images of {entry.record}"
    why = _does_not_fit(status.seconds_left, deadline)
    if why:
        _log(f"{entry.name}: stopping before {what}: {why}")
        return {**out, "result": "stopped at budget"}
    need = status.seconds_left
    _log(f"{entry.name}: {what}" + ("" if need is None else f", ~{need / 60:.1f} min ({status.basis})"))
    try:
        result = evaluate_record(entry, commit, run_autoattack=run_autoattack)
    except FileNotFoundError as e:
        _log(f"{entry.name}: failed: {e}")
        return {**out, "result": "failed: file not found"}
    acc = result["accuracy"]
    _log(f"{entry.name}: written to {entry.record}/{entry.file} in "
         f"{sum(result['seconds'].values()):.1f} s (clean {acc['clean']:.1f}%, pgd {acc['pgd']:.1f}%, "
         f"{entry.attack} {acc['autoattack']:.1f}%)")
    return {**out, "result": "evaluated"}


def _queue_one(entry: QueueEntry | EvalEntry, commit: str, deadline: float | None,
               run_autoattack) -> dict:
    """Make one entry's record or evaluation if missing and it fits: {"name", "result", "epochs"}."""
    if isinstance(entry, EvalEntry):
        return _queue_evaluation(entry, commit, deadline, run_autoattack)
    out = {"name": entry.name, "epochs": 0}
    rec_state, rec_info = _record_state(entry)
    if rec_state == "done":
        return {**out, "result": "done"}
    if rec_state == "differs":
        _log(f"{entry.name}: skipped: the record holds config {rec_info}, not the queue's "
             f"{entry.config.hash()} (update the queue entry or remove the record)")
        return {**out, "result": "skipped: record differs"}
    if not _can_run_here(entry):
        _log(f"{entry.name}: skipped: needs native bf16 (AVX-512-BF16 or AMX) or a GPU")
        return {**out, "result": "skipped: needs native bf16"}
    path = _claim_run_folder(entry, commit)
    try:
        out["epochs"] = _train_epochs(entry, path, deadline)
    except NonFiniteLoss as e:
        _log(f"{entry.name}: failed: {e}")
        return {**out, "result": "failed: non-finite loss"}
    if not is_complete(path):
        return {**out, "result": "stopped at budget"}
    rec = save_record(load_or_train(entry.config), entry.name, notes=entry.notes)
    _log(f"{entry.name}: record saved in {rec.path} (commit {commit[:10]}; final PGD accuracy "
         f"{rec.metrics.get('pgd_acc')}%)")
    return {**out, "result": "recorded"}


def run_queue(path=None, *, budget_minutes: float | None = None, only=None,
              run_autoattack=evaluate.run_autoattack) -> list[dict]:
    """Make the missing records of a queue, in its order, stopping cleanly before a time budget.

    Each entry not done (see entry_status) is trained with load_or_train one epoch at a time
    (until_epoch), so an interrupted queue, even by kill -9, resumes from the last epoch
    checkpoint; when its run is complete it is saved with save_record(run, name, notes=notes).
    Entries that need native bf16 are skipped on a CPU without it (and without a GPU); entries
    whose record holds another config are skipped. An evaluation entry runs when its record
    is made (evaluate_record), in one go: a killed one starts over; one whose record is not
    made is skipped. The queue stops at the first epoch or evaluation that would not end
    within the budget. Progress goes to stdout and runs_dir()/record_queue.log.
    Args:
        path: the queue file (default queue_file()).
        budget_minutes: wall-clock budget of this call (None: no limit).
        only: entry names to work on (others are left alone), in the queue's order.
        run_autoattack: what evaluation entries run as AutoAttack (tests: a cheap stand-in).
    Returns:
        one dict per entry looked at: name, result (done / recorded / evaluated / stopped at
        budget / skipped: ... / failed: ...), epochs (trained by this call).
    Raises:
        RuntimeError: fatlib/ has uncommitted changes (committed_code), before anything runs.
        ValueError: a name in `only` is not in the queue.
    """
    commit = committed_code()
    entries = queue_items(path)
    unknown = sorted(set(only or ()) - {e.name for e in entries})
    if unknown:
        raise ValueError(f"not in the queue: {unknown}; its names: {[e.name for e in entries]}")
    entries = [e for e in entries if not only or e.name in only]
    deadline = None if budget_minutes is None else time.monotonic() + 60 * budget_minutes
    _log(f"queue {Path(path or queue_file())}: {len(entries)} entries, commit {commit[:10]}, budget "
         + ("none" if budget_minutes is None else f"{budget_minutes:g} min"))
    results = []
    for entry in entries:
        results.append(_queue_one(entry, commit, deadline, run_autoattack))
        if results[-1]["result"] == "stopped at budget":
            break
    made, evaluated = (sum(r["result"] == k for r in results) for k in ("recorded", "evaluated"))
    _log(f"queue: {made} records made, {evaluated} evaluations, "
         f"{sum(r['epochs'] for r in results)} epochs trained; "
         + ("stopped at the budget" if results and results[-1]["result"] == "stopped at budget"
            else "went through the queue"))
    return results
