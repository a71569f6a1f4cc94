#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py) with the repo's .venv, offline: scripts/gpu_check.sh [--quick|--dry-run] [--out X.json]
cd "$(dirname "$0")/.." && exec env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 "$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )" scripts/gpu_check.py "$@"
