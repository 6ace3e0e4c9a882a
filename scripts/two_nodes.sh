#!/usr/bin/env bash
# Multi-node DDP training of `python -m fatlib train`, tried on one machine: two torchrun
# "nodes" on 127.0.0.1 (node 0 in the background, node 1 in the foreground) that find each
# other through torchrun's c10d rendezvous, as the nodes of a cluster do.
#
# Usage:  scripts/two_nodes.sh TRAIN_ARGS...      (the flags of `python -m fatlib train`)
#   FATLIB_DATA_DIR=/work/shared/data FATLIB_NO_DOWNLOAD=1 scripts/two_nodes.sh \
#       --dataset mnist --model mnist_net --n-train 400 --n-eval 100 --epochs 2 \
#       --batch-size 40 --method fgsm --delta-init zero --epsilon 0.1 --optimizer adam \
#       --lr-max 2e-3 --no-augment --eval-pgd-steps 3 --no-progress
# Settings (environment): NPROC processes per node (default 1); PORT of the rendezvous
# (default: one the OS finds free); RDZV_ID (default two-nodes-<pid>); JOIN_TIMEOUT seconds a
# node waits for the other (default 120); TORCHRUN (default .venv/bin/torchrun, else the
# torchrun on PATH); FATLIB_RUNS_DIR, where the run folder goes (default runs/).
# Exit status: node 1's if it failed, else node 0's.
#
# --batch-size is the global batch: each of the 2 x NPROC processes trains on its slice, and the
# weights equal a 1-process run's (tests/test_ddp.py). Ranks are handed out in the order the
# nodes join (c10d ignores --node_rank), and rank 0, wherever it runs, writes the run folder.
#
# On a cluster: run the same command on every node, with HOST the address of one of them (the
# rendezvous is hosted there) and PORT open between the nodes; --nproc_per_node is the number
# of GPUs per node (nccl; gloo on CPU-only nodes). FATLIB_RUNS_DIR must be on a filesystem that
# every node sees: every rank checks for a finished run and reads the checkpoint to resume.
#
#   torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
#       --rdzv_id=JOB_NAME -m fatlib train TRAIN_ARGS...
#
# Slurm (in an sbatch script with #SBATCH --nodes=2 --ntasks-per-node=1 --gpus-per-node=4;
# srun starts one torchrun per node, which starts the 4 processes of its node):
#
#   MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
#   srun torchrun --nnodes="$SLURM_NNODES" --nproc_per_node=4 --rdzv_backend=c10d \
#       --rdzv_endpoint="$MASTER_ADDR:29500" --rdzv_id="$SLURM_JOB_ID" \
#       -m fatlib train TRAIN_ARGS...
set -euo pipefail

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit $(( $# == 0 ? 2 : 0 ))
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"  # `-m fatlib` and the default runs/ folder
TORCHRUN=${TORCHRUN:-$REPO/.venv/bin/torchrun}
[ -x "$TORCHRUN" ] || TORCHRUN=$(command -v torchrun) || { echo "two_nodes.sh: no torchrun" >&2; exit 1; }
PYTHON=$(dirname "$TORCHRUN")/python
[ -x "$PYTHON" ] || PYTHON=python3
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

node=("$TORCHRUN" --nnodes=2 --nproc_per_node="${NPROC:-1}" --rdzv_backend=c10d
      --rdzv_endpoint="127.0.0.1:$PORT" --rdzv_id="${RDZV_ID:-two-nodes-$$}"
      --rdzv_conf="join_timeout=${JOIN_TIMEOUT:-120}" --local_addr=127.0.0.1
      --max_restarts=0 -m fatlib train "$@")

echo "node 0 and node 1: ${node[*]}" >&2
"${node[@]}" &
node0=$!
trap 'kill "$node0" 2>/dev/null || true' EXIT  # node 1 failed or was interrupted: stop node 0
status=0
"${node[@]}" || status=$?
if [ "$status" -ne 0 ]; then
    echo "two_nodes.sh: node 1 exited with $status" >&2
    exit "$status"
fi
wait "$node0" || status=$?
trap - EXIT
[ "$status" -eq 0 ] || echo "two_nodes.sh: node 0 exited with $status" >&2
exit "$status"
