#!/usr/bin/env bash
# LSMDC: retrieval and multiple choice (also zero-shot).
# usage: scripts/finetune/lsmdc.sh PRETRAINED.ckpt [vl options, e.g. --trainer configs/trainer/ddp.yaml]
# Prepare the data first (see each config's header). Each task's metrics, predictions and checkpoints
# go to runs/finetune/<config name>/.
set -euo pipefail
PATH="$PATH:$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin"  # finds vl whether or not .venv is active
PRE=${1:?usage: $0 PRETRAINED.ckpt [vl options]}
shift
cd "$(dirname "$0")/../.."

vl fit  -c configs/finetune/lsmdc_retrieval.yaml --model.init_args.init_from "$PRE" "$@"
vl fit  -c configs/finetune/lsmdc_mc.yaml --model.init_args.init_from "$PRE" "$@"
vl test -c configs/finetune/lsmdc_retrieval.yaml --model.init_args.init_from "$PRE" --ckpt_path runs/finetune/lsmdc_retrieval/checkpoints/best.ckpt "$@"
vl test -c configs/finetune/lsmdc_mc.yaml --model.init_args.init_from "$PRE" --ckpt_path runs/finetune/lsmdc_mc/checkpoints/best.ckpt "$@"
# lsmdc_mc: zero-shot from the pretrained checkpoint
vl test -c configs/finetune/lsmdc_mc.yaml --model.init_args.init_from "$PRE" --trainer.logger.init_args.save_dir runs/finetune/lsmdc_mc/zero_shot "$@"
