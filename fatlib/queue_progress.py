"""Unfinished record-queue runs carried from one machine to the next through the repository.

A machine is lent for a few hours, and a record-scale run on a CPU without native bf16 can
take longer (a 7-step l2 run: about 5 h on a 2-core AVX2 EPYC). ``records park`` copies the
resume state of each unfinished queue run (the run folder's checkpoint, config, history and
queue mark, which names the commit that started it) to ``data/queue_progress/<record>/``,
to be committed; on the next machine ``records unpark`` copies it back into the run store,
and ``records run`` from a checkout of that same commit resumes the run at its next epoch,
so that every epoch of the record still comes from the commit its provenance names::

    data/queue_progress/<record>/checkpoint.pt  config.json  history.json  queue.json
                                 progress.json  (epochs done, commit, one line per machine)

A parked folder whose record is made, or whose queue entry now holds another config, is
stale; ``records park`` removes the former, and both commands leave the latter alone and
say so.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fatlib import runs
from fatlib.devices import AUTO_PRECISION_ENV, native_bf16_cpu
from fatlib.train import CHECKPOINT, TrainConfig

PROGRESS = "progress.json"
RUN_FILES = (CHECKPOINT, "config.json", "history.json", runs.QUEUE_MARK)


def progress_dir() -> Path:
    """$FATLIB_QUEUE_PROGRESS_DIR, or <repo>/data/queue_progress: the parked queue runs."""
    return Path(os.environ.get("FATLIB_QUEUE_PROGRESS_DIR") or runs.REPO / "data" / "queue_progress")


def _passes_done(folder: Path) -> int:
    """Epochs (passes) done by the checkpoint in a run folder, 0 if there is none."""
    return runs._checkpoint_state(folder).get("passes_done", 0)


def _copy_folder(files: list, dest: Path) -> None:
    """Copy files into the folder dest, replacing it atomically (a sibling temporary folder,
    then os.replace), so that a kill leaves either the old folder or the new one."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, tmp / Path(f).name)
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _parkable(entry) -> Path | None:
    """The run folder of a training entry if it is a queue run with epochs done but not complete."""
    folder = runs.run_path(entry.config)
    started = runs._started_by(folder)
    if started is None or runs.is_complete(folder) or not _passes_done(folder):
        return None
    return folder


def park(queue=None) -> list[str]:
    """Copy every unfinished queue run (see the module docstring) to progress_dir()/<record>/.

    A run already parked with as many epochs is left as it is; a parked folder whose record is
    made is removed. progress.json keeps one line per park: the epochs done, the UTC date and
    the machine (runs.machine()), so the record's mixed provenance can be told.
    Args:
        queue: the queue file (default runs.queue_file()).
    Returns:
        one line per entry parked, removed or left, saying which and why.
    """
    said = []
    for entry in runs.load_queue(queue):
        parked = progress_dir() / entry.name
        if parked.exists() and runs._record_state(entry)[0] == "done":
            shutil.rmtree(parked)
            said.append(f"{entry.name}: record made; parked run removed")
            continue
        folder = _parkable(entry)
        if folder is None:
            continue
        done = _passes_done(folder)
        before = _read_progress(parked)
        if before and before["passes_done"] >= done and before["run"] == folder.name:
            said.append(f"{entry.name}: already parked at epoch {before['passes_done']}")
            continue
        mark = runs._read_json(folder / runs.QUEUE_MARK)
        progress = {"record": entry.name, "run": folder.name, "commit": mark["commit"],
                    "passes_done": done, "passes": entry.config.passes,
                    "parks": (before or {}).get("parks", []) + [
                        {"passes_done": done, "date_utc": runs._utc_date(), "machine": runs.machine(),
                         "precision": runs._checkpoint_state(folder).get("precision")}]}
        files = [folder / f for f in RUN_FILES if (folder / f).exists()]
        _copy_folder(files, parked)
        runs._write_json(parked / PROGRESS, progress)
        said.append(f"{entry.name}: parked at epoch {done} of {entry.config.passes} "
                    f"(commit {mark['commit'][:10]})")
    return said


def _read_progress(parked: Path) -> dict | None:
    """The progress.json of a parked folder, or None if there is none."""
    path = parked / PROGRESS
    return json.loads(path.read_text()) if path.exists() else None


def parked_runs() -> list[dict]:
    """The progress.json of every parked run, in name order."""
    if not progress_dir().is_dir():
        return []
    found = (_read_progress(p) for p in sorted(progress_dir().iterdir()) if p.is_dir())
    return [p for p in found if p]


def unpark(queue=None) -> tuple[list[str], dict]:
    """Copy the parked runs back into the run store (runs.runs_dir()/<hash>/), where the queue
    resumes them; a run folder here that is as far or further is left alone.

    Args:
        queue: the queue file (default runs.queue_file()): a parked run whose entry is gone or
            now holds another config is not copied (it would train a config nobody asks for).
    Returns:
        (lines saying what was done with each parked run, {commit: names of its runs}: the
        checkouts to run the queue from).
    """
    entries = {e.name: e for e in runs.load_queue(queue)}
    said, commits = [], {}
    for progress in parked_runs():
        name, entry = progress["record"], entries.get(progress["record"])
        if entry is None or entry.config.hash() != progress["run"]:
            said.append(f"{name}: stale (the queue's entry is gone or holds another config); "
                        f"left in {progress_dir() / name}")
            continue
        dest = runs.run_path(entry.config)
        if _passes_done(dest) >= progress["passes_done"]:
            said.append(f"{name}: {dest} is at epoch {_passes_done(dest)} already; left as it is")
        else:
            parked = progress_dir() / name
            _copy_folder([parked / f for f in RUN_FILES if (parked / f).exists()], dest)
            said.append(f"{name}: restored at epoch {progress['passes_done']} of "
                        f"{progress['passes']} into {dest}")
        commits.setdefault(progress["commit"], []).append(name)
    return said, commits


def parked_precision(name: str) -> str:
    """The precision the parked run `name` was trained in: what its first park recorded, or
    (parks from before precision was recorded) what its config's precision resolved to on the
    machine that parked it first."""
    progress = _read_progress(progress_dir() / name)
    first = progress["parks"][0]
    if first.get("precision"):
        return first["precision"]
    config = TrainConfig.from_json((progress_dir() / name / "config.json").read_text())
    if config.precision != "auto":
        return config.precision
    return "bf16" if first["machine"].get("native_bf16") else "fp32"


def _resume_env(precision: str) -> str:
    """What the resume command needs so that a run goes on in `precision` on this machine: a
    commit from before checkpoints kept the precision resolves 'auto' anew (bf16 here)."""
    if precision == "fp32" and native_bf16_cpu():
        return f"{AUTO_PRECISION_ENV}=fp32 "
    return ""


def resume_hint(commits: dict) -> str:
    """The commands that resume unparked runs: for each commit that started some, a checkout of
    it whose queue uses this run store (runs.runs_dir()), with the environment that keeps each
    run in the precision it was trained in; a bf16 run on a CPU without native bf16 is named
    instead (it waits for such a CPU or a GPU)."""
    lines = []
    for c, names in commits.items():
        groups = {}
        for name in names:
            precision = parked_precision(name)
            if precision == "bf16" and not native_bf16_cpu():
                lines.append(f"    {name}: trained in bf16; resume it on a CPU with native bf16 "
                             "(AVX-512-BF16 or AMX) or a GPU")
                continue
            groups.setdefault(_resume_env(precision), []).append(name)
        lines += [f"    git worktree add ../fatlib-queue-{c[:7]} {c}\n"
                  f"    cd ../fatlib-queue-{c[:7]} && {env}FATLIB_RUNS_DIR={runs.runs_dir()} "
                  f"python -m fatlib records run --only {' '.join(group)}"
                  for env, group in groups.items()]
    return "\n".join(lines)
