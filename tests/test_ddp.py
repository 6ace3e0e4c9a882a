"""DDP: the same loop under torchrun (2 gloo processes on CPU) matches 1 process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fatlib import train as T
from fatlib.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
ARGS = ["--dataset", "mnist", "--model", "mnist_net", "--n-train", "400", "--n-eval", "100",
        "--epochs", "2", "--batch-size", "40", "--method", "fgsm", "--delta-init", "zero",
        "--epsilon", "0.1", "--optimizer", "adam", "--lr-max", "2e-3", "--no-augment",
        "--eval-pgd-steps", "3", "--no-progress"]


def _run(prefix, runs_dir, args=ARGS):
    env = dict(os.environ, FATLIB_RUNS_DIR=str(runs_dir), OMP_NUM_THREADS="1")
    out = subprocess.run([*prefix, "-m", "fatlib", "train", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to the interpreter")
    _run([sys.executable], tmp_path / "one")
    _run([str(torchrun), "--standalone", "--nproc_per_node=2"], tmp_path / "two")
    folders = [list((tmp_path / d).iterdir()) for d in ("one", "two")]
    folders = [[f for f in fs if f.is_dir()] for fs in folders]
    assert [len(fs) for fs in folders] == [1, 1], folders  # one run folder, written by rank 0
    one, two = folders[0][0], folders[1][0]
    assert one.name == two.name  # same config, same hash
    m1, m2 = (json.loads((f / "metrics.json").read_text()) for f in (one, two))
    assert m1["steps"] == m2["steps"] == 20
    assert abs(m1["clean_acc"] - m2["clean_acc"]) <= 2.0
    assert abs(m1["pgd_acc"] - m2["pgd_acc"]) <= 3.0
    w1, w2 = (T.load_checkpoint(f / T.CHECKPOINT)["model"] for f in (one, two))
    # no BatchNorm and a zero-init FGSM: the averaged gradients equal the global-batch ones
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
    h1, h2 = (json.loads((f / "history.json").read_text()) for f in (one, two))
    assert abs(h1[-1]["train_loss"] - h2[-1]["train_loss"]) < 1e-3
    assert TrainConfig.from_dict(json.loads((two / "config.json").read_text())).n_train == 400


@pytest.mark.slow
def test_a_resumed_two_process_run_equals_an_uninterrupted_one(tmp_path):
    """Each rank keeps its own RNG stream and sums in the checkpoint: random-start FGSM noise
    after a resume is what the uninterrupted run draws."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to the interpreter")
    two = [str(torchrun), "--standalone", "--nproc_per_node=2"]
    random_start = [a if a != "zero" else "random" for a in ARGS] + ["--eval-every", "3"]
    _run(two, tmp_path / "whole", random_start)
    _run(two, tmp_path / "resumed", random_start + ["--until-epoch", "1"])
    _run(two, tmp_path / "resumed", random_start)
    whole, resumed = (next(p for p in (tmp_path / d).iterdir() if p.is_dir()) for d in ("whole", "resumed"))
    w1, w2 = (T.load_checkpoint(f / T.CHECKPOINT)["model"] for f in (whole, resumed))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    h1, h2 = (json.loads((f / "history.json").read_text()) for f in (whole, resumed))
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in h]
    assert strip(h1) == strip(h2)
