#!/usr/bin/env bash
# MSR-VTT: retrieval (1k-A) and captioning fine-tuned; multiple choice zero-shot from the pretrained
# checkpoint and from the fine-tuned retrieval checkpoint (MSRVTT-MC has no training split); MSRVTT-QA
# lives in its own shards (scripts/finetune/msrvtt_qa.sh).
# usage: scripts/finetune/msrvtt.sh PRETRAINED.ckpt [vl options, e.g. --trainer configs/trainer/ddp.yaml]
# Prepare the data first (see each config's header): one converter run writes every split these
# configs read, the MC step's mc_test included when msrvtt_mc_test.jsonl or MSR_MC_test.csv is given:
#   python -m scripts.prepare.msrvtt --annotations ANNOTATIONS --videos VIDEOS --out data/msrvtt --shards data/msrvtt/shards
# Each task's metrics, predictions and checkpoints go to runs/finetune/<config name>/.
set -euo pipefail
PATH="$PATH:$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin"  # finds vl whether or not .venv is active
PRE=${1:?usage: $0 PRETRAINED.ckpt [vl options]}
shift
cd "$(dirname "$0")/../.."

vl fit  -c configs/finetune/msrvtt_retrieval.yaml --model.init_args.init_from "$PRE" "$@"
vl fit  -c configs/finetune/msrvtt_caption.yaml --model.init_args.init_from "$PRE" "$@"
vl test -c configs/finetune/msrvtt_retrieval.yaml --model.init_args.init_from "$PRE" --ckpt_path runs/finetune/msrvtt_retrieval/checkpoints/best.ckpt "$@"
vl test -c configs/finetune/msrvtt_caption.yaml --model.init_args.init_from "$PRE" --ckpt_path runs/finetune/msrvtt_caption/checkpoints/best.ckpt "$@"
# msrvtt_mc: zero-shot from the pretrained checkpoint
vl test -c configs/finetune/msrvtt_mc.yaml --model.init_args.init_from "$PRE" --trainer.logger.init_args.save_dir runs/finetune/msrvtt_mc/zero_shot "$@"
# msrvtt_mc: with the fine-tuned retrieval model's VTM head
vl test -c configs/finetune/msrvtt_mc.yaml --model.init_args.init_from runs/finetune/msrvtt_retrieval/checkpoints/best.ckpt --trainer.logger.init_args.save_dir runs/finetune/msrvtt_mc/from_retrieval "$@"
