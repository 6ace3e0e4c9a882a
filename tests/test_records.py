"""Every kept record names a clean commit of this repository and re-runs its first interval.

Records are rebuilt from their commit (``git checkout <commit>; python -m fatlib train
--config data/records/<name>/config.json``), so a record from uncommitted code is an error.
CI re-runs the first evaluation interval of a rotating subset of the records each day
(``FATLIB_VERIFY_RECORDS=all`` runs every one; ``=none`` skips the re-runs).
"""

import datetime
import os
import re
import subprocess

import pytest

from fatlib import runs

RECORDS = sorted(p.name for p in runs.records_dir().iterdir() if (p / "config.json").exists()) \
    if runs.records_dir().exists() else []
VERIFY_SHARE = 6  # each day re-runs every 6th record (another sixth the next day)


def _git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(runs.REPO), *args], capture_output=True, text=True)


def _verified_today() -> list:
    mode = os.environ.get("FATLIB_VERIFY_RECORDS", "subset")
    if mode == "none":
        return []
    if mode == "all":
        return RECORDS
    day = datetime.date.today().toordinal()
    return [name for i, name in enumerate(RECORDS) if (i + day) % VERIFY_SHARE == 0]


@pytest.mark.parametrize("name", RECORDS)
def test_a_record_names_a_clean_commit_of_this_repository(name):
    commit = runs.load_record(name).provenance["git_commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit or ""), \
        f"record {name} was made from {commit!r}: re-make it from committed code"
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "false":
        assert _git("cat-file", "-e", f"{commit}^{{commit}}").returncode == 0, \
            f"record {name} names {commit}, which is not a commit of this repository"


@pytest.mark.slow
@pytest.mark.parametrize("name", _verified_today())
def test_a_record_reproduces_its_first_interval(name):
    reason = runs.unverifiable_here(name)
    if reason:
        pytest.skip(reason)
    result = runs.verify_record(name)
    assert result, result.mismatches
