#!/usr/bin/env bash
# Multi-node pretraining without SLURM: run this on every node with NODE_RANK=0..NNODES-1 and the same
# MASTER_ADDR. torchrun starts one process per GPU; Lightning reads torchrun's environment.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/torchrun_pretrain.sh configs/pretrain/violet_base.yaml
set -euo pipefail
PATH="$PATH:$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"  # finds vl whether or not .venv is active
CONFIG=${1:?usage: scripts/torchrun_pretrain.sh CONFIG.yaml [extra vl fit args]}
shift
GPUS=${GPUS:-8}
torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$GPUS" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m vl.cli fit -c "$CONFIG" --trainer.num_nodes "${NNODES:-1}" --trainer.devices "$GPUS" "$@"
