"""DDP: the same loop under torchrun matches 1 process on the same global batch, whether its 2
gloo processes share one node (--standalone) or are 2 nodes joined by a c10d rendezvous."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
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
NODES_TIMEOUT_S = 300  # both nodes' torchrun, rendezvous and training (~10 s here)
JOIN_TIMEOUT_S = 60  # a node whose partner never joins fails after this (torchrun's default: 600)


def _env(runs_dir) -> dict:
    return dict(os.environ, FATLIB_RUNS_DIR=str(runs_dir), OMP_NUM_THREADS="1")


def _run(prefix, runs_dir, args=ARGS):
    out = subprocess.run([*prefix, "-m", "fatlib", "train", *args], cwd=REPO, env=_env(runs_dir),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _torchrun() -> str:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to the interpreter")
    return str(torchrun)


def _run_folder(runs_dir) -> Path:
    """The one run folder under runs_dir (written by rank 0)."""
    folders = [p for p in Path(runs_dir).iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_together(commands, runs_dir, logs_dir, timeout_s: float) -> list[tuple[int, str]]:
    """Start every command at once; (exit status, output) of each.

    Every command runs in a process group of its own, killed (torchrun and its workers) when
    the time is up or as soon as another command fails, so a rendezvous that never completes
    fails the test instead of hanging it; a killed command's status is -9.
    """
    procs = []
    try:
        for i, cmd in enumerate(commands):
            with open(Path(logs_dir) / f"node{i}.log", "w") as log:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(runs_dir), stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if None not in codes or any(c for c in codes if c is not None):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(p.returncode, (Path(logs_dir) / f"node{i}.log").read_text()) for i, p in enumerate(procs)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The run folder of ARGS trained by 1 process: the reference of the DDP runs."""
    runs = tmp_path_factory.mktemp("one")
    _run([sys.executable], runs)
    return _run_folder(runs)


def _assert_same_training(one: Path, ddp: Path, world: int) -> None:
    """A DDP run folder holds what the 1-process one does: config, steps, metrics, weights."""
    assert one.name == ddp.name  # same config, same hash
    m1, m2 = (json.loads((f / "metrics.json").read_text()) for f in (one, ddp))
    assert m1["steps"] == m2["steps"] == 20
    assert abs(m1["clean_acc"] - m2["clean_acc"]) <= 2.0
    assert abs(m1["pgd_acc"] - m2["pgd_acc"]) <= 3.0
    w1, w2 = (T.load_checkpoint(f / T.CHECKPOINT)["model"] for f in (one, ddp))
    # no BatchNorm and a zero-init FGSM: the averaged gradients equal the global-batch ones, up
    # to float summation order (measured: max |difference| 4e-7 after 20 Adam steps)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
    h1, h2 = (json.loads((f / "history.json").read_text()) for f in (one, ddp))
    assert abs(h1[-1]["train_loss"] - h2[-1]["train_loss"]) < 1e-3
    assert TrainConfig.from_dict(json.loads((ddp / "config.json").read_text())).n_train == 400
    assert len(T.load_checkpoint(ddp / T.CHECKPOINT)["ranks"]) == world


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, one_process):
    _run([_torchrun(), "--standalone", "--nproc_per_node=2"], tmp_path)
    _assert_same_training(one_process, _run_folder(tmp_path), world=2)


@pytest.mark.slow
def test_two_nodes_joined_by_a_c10d_rendezvous_match_one_process(tmp_path, one_process):
    """2 nodes x 1 process on 127.0.0.1, each its own torchrun, as on a cluster.

    Both write to one FATLIB_RUNS_DIR, as a cluster's nodes must (a shared filesystem): every
    rank checks for a finished run and reads the checkpoint to resume. c10d hands out ranks in
    the order the nodes join (torchrun ignores --node_rank, which only the static rendezvous
    uses), so rank 0, the one that writes the run folder, may be on either node.
    """
    torchrun = _torchrun()
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    logs.mkdir()
    node = [torchrun, "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{_free_port()}", f"--rdzv_id=fatlib-test-{os.getpid()}",
            f"--rdzv_conf=join_timeout={JOIN_TIMEOUT_S}", "--local_addr=127.0.0.1",
            "--max_restarts=0", "-m", "fatlib", "train", *ARGS]
    results = _run_together([node, node], runs, logs, NODES_TIMEOUT_S)
    for i, (code, log) in enumerate(results):
        assert code == 0, f"node {i} exited with {code} (-9: killed after a failure or the " \
                          f"{NODES_TIMEOUT_S} s timeout):\n{log}"
    assert sum("trained 20 steps" in log for _, log in results) == 1  # only rank 0 prints
    _assert_same_training(one_process, _run_folder(runs), world=2)


@pytest.mark.slow
def test_a_resumed_two_process_run_equals_an_uninterrupted_one(tmp_path):
    """Each rank keeps its own RNG stream and sums in the checkpoint: random-start FGSM noise
    after a resume is what the uninterrupted run draws."""
    two = [_torchrun(), "--standalone", "--nproc_per_node=2"]
    random_start = [a if a != "zero" else "random" for a in ARGS] + ["--eval-every", "3"]
    _run(two, tmp_path / "whole", random_start)
    _run(two, tmp_path / "resumed", random_start + ["--until-epoch", "1"])
    _run(two, tmp_path / "resumed", random_start)
    whole, resumed = (_run_folder(tmp_path / d) for d in ("whole", "resumed"))
    w1, w2 = (T.load_checkpoint(f / T.CHECKPOINT)["model"] for f in (whole, resumed))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    h1, h2 = (json.loads((f / "history.json").read_text()) for f in (whole, resumed))
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in h]
    assert strip(h1) == strip(h2)


def test_a_distributed_process_exits_with_its_code_and_keeps_its_output(tmp_path):
    """devices.exit_distributed leaves the process group and exits at once (no interpreter
    teardown), with the given status and with what the process printed flushed to its pipe."""
    script = (
        "import torch.distributed as dist\n"
        "from fatlib import devices\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, "
        "world_size=1)\n"
        "print('finished work', flush=False)\n"
        "devices.exit_distributed(3)\n"
        "print('not reached')\n")
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe buffers
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=buffered,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert out.stdout == "finished work\n"
