"""Where and how a run computes: its device, its process group (DDP under torchrun), its
precision (autocast; 'auto' picks bf16 only where it is native) and its random streams.

``$FATLIB_AUTO_PRECISION=fp32`` makes precision 'auto' resolve to fp32 on every CPU (the
test suite's second mode); see :func:`resolve_precision`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from dataclasses import dataclass

import torch

AUTO_PRECISION_ENV = "FATLIB_AUTO_PRECISION"  # 'fp32': precision 'auto' resolves to fp32 on a CPU


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda (this rank's GPU under DDP) if available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


@dataclass
class Dist:
    """Process group facts: rank, world size; world 1 means no DDP."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def from_main(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.broadcast(t, 0)
        return t

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (a list of one on a single process)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def slice(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch."""
        return x if self.world == 1 else torch.tensor_split(x, self.world)[self.rank]


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def exit_distributed(code: int = 0) -> None:
    """End a torchrun process: leave its process group with the other ranks, then exit.

    A finished two-process run once aborted at its very end in CI (SIGABRT, "terminate called
    without an active exception", after its last output). So the ranks first meet at a
    barrier: none tears its gloo connections down while another still writes its checkpoint.
    After the process group is destroyed the process exits at once (``os._exit``), skipping
    the interpreter's teardown, where gloo's C++ threads may still run. Everything a run
    writes is closed by then; stdout and stderr are flushed first.

    Args:
        code: the process's exit status.
    """
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 or AMX in oneDNN); emulated bf16 is slow.

    On a CPU without it (e.g. AVX2 only) a bf16-autocast training step is many times slower
    than fp32, so ``precision='auto'`` trains in fp32 there.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run computes in: 'auto' becomes the fast one this device supports.

    Args:
        precision: 'fp32', 'bf16', 'fp16' or 'auto'.
        device: the training device.

    Returns:
        'auto' -> 'bf16' on a CPU with native bf16 (else 'fp32'), 'bf16' on a CUDA GPU that
        supports it (else 'fp16' with a GradScaler); any other value unchanged.
        ``$FATLIB_AUTO_PRECISION=fp32`` makes 'auto' resolve to fp32 on every CPU (the test
        suite's second mode); ``=bf16`` keeps bf16 where it is native and fp32 elsewhere.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    forced = os.environ.get(AUTO_PRECISION_ENV, "")
    if forced not in ("", "fp32", "bf16"):
        raise ValueError(f"${AUTO_PRECISION_ENV} must be 'fp32' or 'bf16' (or unset); "
                         f"got {forced!r}")
    # 'bf16' is the default behaviour: bf16 only where native (emulated bf16 is ~13x slower)
    return "bf16" if forced != "fp32" and native_bf16_cpu() else "fp32"


def resumed_precision(precision: str, started: str | None, device: torch.device) -> str:
    """The precision a resumed run goes on in: the one it started in.

    A run's 'auto' is decided once, when it starts, so that every epoch of it computes in the
    same arithmetic: an fp32 run started on a CPU without native bf16 stays fp32 on one with
    it, and a bf16 run goes on in bf16 only where bf16 is native (or on a GPU).
    Args:
        precision: the config's precision ('auto', 'fp32', ...).
        started: the precision the checkpoint was trained in (None: a checkpoint that does
            not say, from before this was recorded: this device's resolve_precision).
        device: the training device.
    Returns:
        'fp32', 'bf16' or 'fp16'.
    Raises:
        ValueError: this device cannot go on in the run's precision.
    """
    here = resolve_precision(precision, device)
    if started is None or started == here:
        return here
    native = device.type == "cuda" or native_bf16_cpu()
    if precision == "auto" and (started == "fp32" or started == "bf16" and native):
        return started
    where = "a GPU" if started == "fp16" else "a CPU with native bf16 (AVX-512-BF16 or AMX) or a GPU"
    raise ValueError(f"this run was trained in {started} and this device would go on in {here}: "
                     f"resume it on {where}, or train it again in another run folder")


def autocast(device: torch.device, precision: str):
    """The autocast context of a training precision ('auto' resolved for ``device``)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
    return torch.autocast(device.type, dtype=dtype)


def derived_seed(seed: int, *parts) -> int:
    """A seed of its own for (seed, *parts): independent streams from one run seed."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")


@contextlib.contextmanager
def seeded(seed: int, *parts):
    """Run a block on its own RNG stream, leaving the training RNG untouched."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(seed, *parts))
        yield

