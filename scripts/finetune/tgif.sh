#!/usr/bin/env bash
# TGIF-QA: FrameQA (open-ended), Action and Transition (multiple choice, also zero-shot).
# usage: scripts/finetune/tgif.sh PRETRAINED.ckpt [vl options, e.g. --trainer configs/trainer/ddp.yaml]
# Prepare the data first (see each config's header). Each task's metrics, predictions and checkpoints
# go to runs/finetune/<config name>/.
set -euo pipefail
PATH="$PATH:$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin"  # finds vl whether or not .venv is active
PRE=${1:?usage: $0 PRETRAINED.ckpt [vl options]}
shift
cd "$(dirname "$0")/../.."

vl fit  -c configs/finetune/tgif_frameqa.yaml --model.init_args.init_from "$PRE" "$@"
vl fit  -c configs/finetune/tgif_action.yaml --model.init_args.init_from "$PRE" "$@"
vl fit  -c configs/finetune/tgif_transition.yaml --model.init_args.init_from "$PRE" "$@"
vl test -c configs/finetune/tgif_frameqa.yaml --model.init_args.init_from "$PRE" --ckpt_path runs/finetune/tgif_frameqa/checkpoints/best.ckpt "$@"
vl test -c configs/finetune/tgif_action.yaml --model.init_args.init_from "$PRE" --ckpt_path runs/finetune/tgif_action/checkpoints/best.ckpt "$@"
vl test -c configs/finetune/tgif_transition.yaml --model.init_args.init_from "$PRE" --ckpt_path runs/finetune/tgif_transition/checkpoints/best.ckpt "$@"
# tgif_action: zero-shot from the pretrained checkpoint
vl test -c configs/finetune/tgif_action.yaml --model.init_args.init_from "$PRE" --trainer.logger.init_args.save_dir runs/finetune/tgif_action/zero_shot "$@"
# tgif_transition: zero-shot from the pretrained checkpoint
vl test -c configs/finetune/tgif_transition.yaml --model.init_args.init_from "$PRE" --trainer.logger.init_args.save_dir runs/finetune/tgif_transition/zero_shot "$@"
