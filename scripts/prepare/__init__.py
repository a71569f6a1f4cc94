"""Benchmark converters: official annotation files -> annotation JSONL (DESIGN §2) -> WebDataset shards.

One module per benchmark, each runnable as `python -m scripts.prepare.<benchmark> --help` (or as
`python scripts/prepare/<benchmark>.py`); the plumbing they share lives in `common.py`.
"""
