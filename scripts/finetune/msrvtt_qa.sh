#!/usr/bin/env bash
# MSRVTT-QA: open-ended QA.
# usage: scripts/finetune/msrvtt_qa.sh PRETRAINED.ckpt [vl options, e.g. --trainer configs/trainer/ddp.yaml]
# Prepare the data first (see each config's header). Each task's metrics, predictions and checkpoints
# go to runs/finetune/<config name>/.
set -euo pipefail
PATH="$PATH:$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin"  # finds vl whether or not .venv is active
PRE=${1:?usage: $0 PRETRAINED.ckpt [vl options]}
shift
cd "$(dirname "$0")/../.."

vl fit  -c configs/finetune/msrvtt_qa.yaml --model.init_args.init_from "$PRE" "$@"
vl test -c configs/finetune/msrvtt_qa.yaml --model.init_args.init_from "$PRE" --ckpt_path runs/finetune/msrvtt_qa/checkpoints/best.ckpt "$@"
