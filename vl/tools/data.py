"""``vl data``: ``datapipes.cli``'s commands (shards, inspect, synth) plus those that need ``vl`` models.

``datapipes`` never imports ``vl``, so the commands that run a ``vl`` model are handed to its CLI here
(``datapipes.cli.main``'s ``extra_commands``) rather than imported by it.
"""

from __future__ import annotations

from typing import Optional

from datapipes.cli import ExtraCommand
from datapipes.cli import main as data_main


def _vq_targets(argv: list[str]) -> int:
    from vl.tools.vq_targets import main as vq_targets_main  # imported when used: it loads torch models

    return vq_targets_main(argv)


EXTRA_COMMANDS: dict[str, ExtraCommand] = {
    "vq-targets": ExtraCommand("precompute MVM vq targets (visual-tokenizer codes) into shards", _vq_targets),
}


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``vl data`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return data_main(argv, extra_commands=EXTRA_COMMANDS)
