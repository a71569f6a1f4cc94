"""LightningCLI as `vl` uses it: subclass mode, omegaconf interpolation, one-line config errors, and
checks that `--ckpt_path` names a checkpoint, that evaluation has trained weights and that no model option
is silently replaced by a checkpoint's."""

from __future__ import annotations

import logging
import sys
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any, NoReturn, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vl.lit.callbacks import SaveLastOnTrainEnd
from vl.lit.checkpoint import RandomState, check_checkpoint_file
from vl.lit.data import SkipCounter


class _DropAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines (advertisements for cloud
    services, printed on every run); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_dependency_notices() -> None:
    """Silence the notices of dependencies that say nothing about the user's run, each by its exact text:
    Lightning's advertisements, and the FutureWarning that Lightning's own use of torch's deprecated
    ``LeafSpec`` raises on every step (a call inside Lightning, which a user cannot change)."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertisements) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropAdvertisements())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)


class VLArgumentParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors are one line naming the bad key, not a page of usage."""

    argv: list[str] = []  # the command line being parsed (set by VLLightningCLI), to name nested keys in full

    @classmethod
    def full_key(cls, option: str) -> str:
        """``--optim.lrr=0.1`` as the user wrote it (``--model.init_args.optim.lrr``): jsonargparse reports
        an unknown option inside a class's arguments relative to that class."""
        key = option.split("=", 1)[0]
        for token in cls.argv:
            given = token.split("=", 1)[0]
            if given.startswith("--") and given != key and given.endswith("." + key[2:]):
                return given
        return key

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        prog = self.prog or "vl"
        first = " ".join(str(message).split())  # collapse jsonargparse's multi-line messages
        head, sep, options = first.partition("unrecognized arguments: ")
        if sep:
            first = head + sep + " ".join(self.full_key(o) for o in options.split() if o.startswith("--"))
        print(f"{prog}: error: {first}", file=sys.stderr)
        print(f"{prog}: run `{prog} --help` for the accepted options.", file=sys.stderr)
        sys.exit(2)


class VLLightningCLI(LightningCLI):
    """`vl fit|validate|test|predict -c CONFIG.yaml [--section.key value ...]`.

    Model and data are given as `class_path` + `init_args`, so any LightningModule / DataModule of the
    project (pretraining, each fine-tuning task) runs through the same command.
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        quiet_dependency_notices()
        VLArgumentParser.argv = list(sys.argv[1:] if args is None else args)
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", VLArgumentParser)
        # Every run counts skipped samples and leaves a resumable last.ckpt, whatever its config says.
        # Checkpoints also hold the global random state, so a resumed run draws the same dropout masks.
        kwargs.setdefault("trainer_defaults", {"callbacks": [SkipCounter(), SaveLastOnTrainEnd(), RandomState()]})
        super().__init__(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[pl.Callback]) -> pl.Trainer:
        """Lightning's, with each of the CLI's own callbacks added only when the config lists none of its
        type: a config that also lists ``vl.lit.SkipCounter`` would count every skip twice."""
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        have = {type(cb) for cb in [*listed, *callbacks]}
        defaults = self.trainer_defaults.get("callbacks", [])
        defaults = defaults if isinstance(defaults, list) else [defaults]
        self.trainer_defaults = {**self.trainer_defaults,
                                 "callbacks": [cb for cb in defaults if type(cb) not in have]}
        return super()._instantiate_trainer(config, callbacks)

    # ---- checks of --ckpt_path and of where an evaluated model's weights come from -------------------

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint file, then let Lightning restore the model's hyper-parameters from it;
        a model option given on the command line that the checkpoint's value replaces is an error."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return super()._parse_ckpt_path()
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if ckpt_path and ckpt_path not in CKPT_ALIASES:
            check_checkpoint_file(ckpt_path)
        before = deepcopy(self.config[subcommand].get("model"))
        super()._parse_ckpt_path()
        after = self.config[subcommand].get("model")
        for option in model_options(VLArgumentParser.argv):
            wanted, restored = model_value(before, option), model_value(after, option)
            if wanted != restored:
                raise ValueError(
                    f"--{option} {wanted!r} cannot apply next to --ckpt_path {ckpt_path}: the model is rebuilt "
                    f"with the checkpoint's hyper-parameters ({restored!r}). Drop the option, or train a new "
                    f"model with it (a fine-tuning config can start from this checkpoint with init_from)")

    def before_instantiate_classes(self) -> None:
        """Refuse to evaluate a model that has no trained weights (one line saying how to give them)."""
        subcommand = self.config.get("subcommand")
        if subcommand not in ("validate", "test", "predict"):
            return
        config = self.config[subcommand]
        init_from = model_value(config.get("model"), "model.init_args.init_from")
        if config.get("ckpt_path") is None and init_from is None:
            raise ValueError(
                f"`vl {subcommand}` needs trained weights: give --ckpt_path PATH.ckpt (e.g. "
                f"runs/demo/checkpoints/last.ckpt, or `last` for the newest of this config's run), or for a "
                f"fine-tuning task --model.init_args.init_from PATH.ckpt")

    def _run_subcommand(self, subcommand: str) -> None:
        if self.config_init[subcommand].get("ckpt_path") == "last":
            self._check_last_exists(subcommand)
        super()._run_subcommand(subcommand)

    def _check_last_exists(self, subcommand: str) -> None:
        """`--ckpt_path last` with no last checkpoint is an error (Lightning would train from step 0)."""
        dirs = [cb.dirpath for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        if not dirs or any(d is None for d in dirs):
            return  # a checkpoint folder Lightning names at setup: it reports what it finds there
        pattern = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}*{ModelCheckpoint.FILE_EXTENSION}"
        if not any(any(Path(d).glob(pattern)) for d in dirs):
            where = ", ".join(str(d) for d in dirs)
            raise FileNotFoundError(
                f"--ckpt_path last: no {ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION} in "
                f"{where}. To start a new run, leave out --ckpt_path; to resume, give the run's checkpoint file")


# Values of --ckpt_path that Lightning resolves itself.
CKPT_ALIASES = ("last", "best", "hpc", "registry")


def model_options(argv: Sequence[str]) -> list[str]:
    """The model options given on the command line, e.g. ``model.init_args.embed_dim``."""
    options = []
    for token in argv:
        key = token.split("=", 1)[0]
        if key.startswith("--model."):
            options.append(key[2:])
    return options


def model_value(model: Any, option: str) -> Any:
    """The value ``option`` (``model.init_args.video.temporal``) takes in a parsed ``model`` config:
    restored checkpoint hyper-parameters (``dict_kwargs``) first, then ``init_args``; None when absent."""
    parts = option.split(".")[1:]
    if parts and parts[0] in ("init_args", "dict_kwargs"):
        parts = parts[1:]
    if parts == ["class_path"] or not parts:
        return model.get("class_path") if model is not None else None
    for section in ("dict_kwargs", "init_args"):
        value: Any = model.get(section) if model is not None else None
        for part in parts:
            try:
                value = value[part]
            except (KeyError, TypeError, IndexError):
                value = None
                break
        if value is not None:
            return value.as_dict() if hasattr(value, "as_dict") else value
    return None
