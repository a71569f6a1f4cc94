"""LightningCLI as `vl` uses it: subclass mode, omegaconf interpolation, one-line config errors."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vl.lit.callbacks import SaveLastOnTrainEnd
from vl.lit.data import SkipCounter


class VLArgumentParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors are one line naming the bad key, not a page of usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        prog = self.prog or "vl"
        first = " ".join(str(message).split())  # collapse jsonargparse's multi-line messages
        print(f"{prog}: error: {first}", file=sys.stderr)
        print(f"{prog}: run `{prog} --help` for the accepted options.", file=sys.stderr)
        sys.exit(2)


class VLLightningCLI(LightningCLI):
    """`vl fit|validate|test|predict -c CONFIG.yaml [--section.key value ...]`.

    Model and data are given as `class_path` + `init_args`, so any LightningModule / DataModule of the
    project (pretraining, each fine-tuning task) runs through the same command.
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", VLArgumentParser)
        # Every run counts skipped samples and leaves a resumable last.ckpt, whatever its config says.
        kwargs.setdefault("trainer_defaults", {"callbacks": [SkipCounter(), SaveLastOnTrainEnd()]})
        super().__init__(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )
