"""Run cards: what a page computed with (profile, parameters, data, sizes, device, versions
and an optional sanity report), shown on the page after the chapter loads its data."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from fatlib.book.display import fmt, html_table, shorten
from fatlib.book.params import Params
from fatlib.book.sources import FATLIB_DIR


@dataclass
class RunCard:
    """What a page computed with: profile, parameters, data, sizes, device, versions."""

    rows: list

    def _repr_html_(self):
        return ('<div class="fatlib-run-card"><strong>Run card</strong>'
                + html_table(["", ""], self.rows, header=False) + "</div>")

    def __repr__(self):
        width = max(len(k) for k, _ in self.rows)
        return "Run card\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in self.rows)


def _sanity_rows(checks) -> list:
    """Card rows for a sanity report: a summary, then one row per check (name, verdict, finding)."""
    checks = list(checks)
    failed = [c.name for c in checks if not c.passed]
    rows = [("sanity checks", f"{len(checks) - len(failed)} of {len(checks)} passed"
             + (f"; failed: {', '.join(failed)}" if failed else ""))]
    return rows + [(f"sanity: {c.name}", f"{'passed' if c.passed else 'FAILED'}: "
                    f"{shorten(c.message, 200)}") for c in checks]


def run_card(params: Params, *, data=(), sizes: dict | None = None, device=None,
             notes: str | None = None, sanity=None) -> RunCard:
    """The run card every chapter shows after loading its data.

    Args:
        params: the chapter's resolved parameters.
        data: source strings from ``fatlib.data.load_with_source`` (one per split used).
        sizes: what -> how many, e.g. {"test images (accuracy vs eps)": 500}.
        device: torch device the chapter computes on (default: CPU, or CUDA if available).
        notes: one more line (e.g. where trained models come from).
        sanity: optional sanity report, a list of ``fatlib.sanity.Check`` (e.g. from
            ``fatlib.sanity.run_cheap``): shown as a summary row and one row per check
            (name, passed or FAILED, what it found, shortened to 200 characters).
    Returns:
        RunCard, displayed as a table in notebooks and as text in a terminal.
    """
    import torch

    import fatlib
    from fatlib.devices import resolve_precision

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    over = params.overridden
    rows = [("profile", params.profile),
            ("parameters", ", ".join(f"{k}={fmt(v)}" for k, v in params.values.items())),
            ("overridden", ", ".join(f"{k}={fmt(v)} (profile: {fmt(d)})"
                                     for k, (v, d) in over.items()) or "none")]
    rows += [("data", s) for s in data]
    rows += [(f"size: {k}", fmt(v)) for k, v in (sizes or {}).items()]
    auto = resolve_precision("auto", torch.device(device))
    rows += [("device", f"{torch.device(device)}, {torch.get_num_threads()} CPU threads; "
                        f"precision 'auto' trains in {auto} here"),
             ("versions", f"fatlib {fatlib.__version__} ({_git_describe()}), "
                          f"torch {torch.__version__}, python {sys.version.split()[0]}")]
    if notes:
        rows.append(("notes", notes))
    if sanity is not None:
        rows += _sanity_rows(sanity)
    return RunCard(rows)


def _git_describe() -> str:
    root = FATLIB_DIR.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "no git"
    return f"commit {out.stdout.strip()}" if out.returncode == 0 else "no commit"
