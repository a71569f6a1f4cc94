"""LightningCLI as `vl` uses it: subclass mode, omegaconf interpolation, config files that override a base
file (`base: _base_/retrieval.yaml`, see ``resolve_config_bases``), one-line config errors, and
checks that `--ckpt_path` names a checkpoint, that evaluation has trained weights, that no model option
is silently replaced by a checkpoint's, that a new run does not overwrite an earlier run's checkpoints,
that a GPU config is not run on a machine without one, and that a model starting from random weights
says so."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any, NoReturn, Sequence

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from vl.config import (  # the config loader, re-exported
    ConfigBaseError,
    _read_mapping,
    _resolve_config_bases,
    describe_config_files,
    load_config,
    merge_config,
    resolve_config_bases,
)
from vl.lit.callbacks import SaveLastOnTrainEnd, VLProgressBar
from vl.lit.checkpoint import RandomState, check_checkpoint_file, recorded_hparams
from vl.lit.data import SkipCounter


class _DropAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines (advertisements for cloud
    services, printed on every run); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_dependency_notices() -> None:
    """Silence the notices of dependencies that say nothing about the user's run, each by its exact text:

    - Lightning's advertisements;
    - the FutureWarning that Lightning's own use of torch's deprecated ``LeafSpec`` raises on every step
      (a call inside Lightning, which a user cannot change);
    - "Checkpoint directory ... exists and is not empty": ``vl fit`` checks the folder itself before the
      run starts (an error naming ``--overwrite`` unless the run resumes with ``--ckpt_path``);
    - "ModelCheckpoint(monitor=...) could not find the monitored key": Lightning warns so only while no
      validation has run (after one, a missing key is its error), i.e. on a run shorter than its
      validation interval; ``SaveLastOnTrainEnd`` says in one line that no ranked checkpoint exists yet;
    - "Couldn't infer the batch indices" of `vl predict`: its writer (vl.lit.predict) never reads them.
    """
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertisements) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropAdvertisements())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty\.")
    warnings.filterwarnings("ignore", message=r"`ModelCheckpoint\(monitor=.*\)` could not find the monitored key")
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices fetched from your dataloader")


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _interpolated_keys(value: Any) -> set[str]:
    """The keys that ``${key}`` interpolations in a config's strings refer to."""
    if isinstance(value, dict):
        return set().union(*(_interpolated_keys(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_interpolated_keys(v) for v in value)) if value else set()
    return set(_INTERPOLATION.findall(value)) if isinstance(value, str) else set()


def with_command_line_values(config: dict[str, Any], argv: Sequence[str]) -> dict[str, Any] | None:
    """``config`` with the command line's value of every key that one of its ``${...}`` refers to, or None
    when the command line sets none of them.

    jsonargparse resolves a file's interpolations when it reads the file, before the command line's
    overrides apply, so ``--trainer.default_root_dir runs/x`` would leave the logs and checkpoints that
    interpolate it in the config's folder, and ``--data.init_args.num_frames 4`` would build a model for
    the config's frame count. Writing those values into the file's mapping first makes every
    interpolation see what the command line says (jsonargparse then applies the same values again)."""
    wanted = _interpolated_keys(config)
    given: dict[str, Any] = {}
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        key, eq, value = token[2:].partition("=")
        if key not in wanted or (not eq and i + 1 >= len(argv)):
            continue
        given[key] = yaml.safe_load(value if eq else argv[i + 1])
    if not given:
        return None
    config = deepcopy(config)
    for key, value in given.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return config


class VLArgumentParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors are one line naming the bad key, not a page of usage, and whose
    ``-c`` files may override a base file (``resolve_config_bases``)."""

    argv: list[str] = []  # the command line being parsed (set by VLLightningCLI), to name nested keys in full
    _merged_content: str | None = None  # the merged YAML that parse_string reads instead of the file's own text
    merged_from: list[str] = []  # the configs with bases this command line read (set by parse_path), named by errors

    def parse_path(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        """jsonargparse's, reading a config with a ``base`` as the merged YAML (in the file's own folder, so
        paths in it still resolve as jsonargparse resolves them); a bad base is a one-line error."""
        try:
            resolved = _resolve_config_bases(Path(str(path)))
        except ConfigBaseError as e:
            self.error(str(e))
        try:
            own = _read_mapping(Path(str(path))) if resolved is None and Path(str(path)).is_file() else None
        except ConfigBaseError:
            own = None  # not YAML: jsonargparse says so, with its own message
        config = resolved[0] if resolved is not None else own
        overridden = with_command_line_values(config, self.argv) if config is not None else None
        if resolved is None and overridden is None:
            return super().parse_path(path, *args, **kwargs)
        self._merged_content = yaml.safe_dump(overridden or config, sort_keys=False, allow_unicode=True)
        if resolved is not None:
            VLArgumentParser.merged_from.append(describe_config_files(resolved[1]))
        try:
            return super().parse_path(path, *args, **kwargs)
        finally:
            self._merged_content = None

    def parse_string(self, content: str, *args: Any, **kwargs: Any) -> Any:
        merged, self._merged_content = self._merged_content, None
        return super().parse_string(merged if merged is not None else content, *args, **kwargs)

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

    @classmethod
    def _early_error(cls, command: str) -> str | None:
        """The message `vl` gives an unknown model/data key before Lightning loads (with a suggestion), once
        the classes this command line names are recorded (vl.known_options; recorded here, as they are
        loaded now): a mistake reads the same whether or not an earlier run recorded them."""
        from vl import known_options
        from vl.cli import precheck, section_classes

        args = cls.argv[1:] if cls.argv and cls.argv[0] == command else list(cls.argv)
        try:
            known_options.record(section_classes(args).values())
            early = precheck(command, args)
        except Exception:  # the check is a courtesy: jsonargparse's own message follows
            return None
        return early if early is not None and early.startswith("unrecognized arguments: ") else None

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # Headed by the subcommand as the user typed it (`vl fit`), whichever parser (the main one, a
        # subcommand's) found the error, never argparse's "vl [options] fit" or the script's file name.
        given = self.argv[0] if self.argv and self.argv[0] in ("fit", "validate", "test", "predict") else "fit"
        prog = f"vl {given}"
        first = " ".join(str(message).split())  # collapse jsonargparse's multi-line messages
        head, sep, options = first.partition("nrecognized arguments: ")
        if sep:
            first = self._early_error(given) or (
                "unrecognized arguments: " + " ".join(self.full_key(o) for o in options.split() if o.startswith("--")))
        named = re.findall(r"'([^']+)'", first)
        on_command_line = any(name in token for name in named for token in self.argv if token.startswith("--"))
        if self.merged_from and not sep and not on_command_line:  # a key of a config with bases: say which files
            first = f"{first} (config: {'; '.join(self.merged_from)})"
        print(f"{prog}: error: {first}", file=sys.stderr)
        print(f"{prog}: `{prog} --help` lists the options; `{prog} -c CONFIG --print_config` shows every key of a "
              f"config with its value", file=sys.stderr)
        sys.exit(2)


SUBCOMMAND_HELP = (
    "Model and data options depend on the classes a config names, so they are not listed here: "
    "`vl {command} -c CONFIG --print_config` prints every key of a config (model, data, trainer) with its value, "
    "and `vl {command} --model.help CLASS` (e.g. vl.lit.PretrainModule) or `--data.help vl.lit.VideoTextDataModule` "
    "lists a class's options with their help. Override any key as --model.init_args.KEY VALUE."
)
FIT_HELP = (" --overwrite: start afresh in a checkpoint folder that holds an earlier run's checkpoints "
            "(they are deleted); without it such a run stops, unless it resumes with --ckpt_path.")


class NoGPUError(ValueError):
    """A config asks for a GPU on a machine that has none."""


class VLLightningCLI(LightningCLI):
    """`vl fit|validate|test|predict -c CONFIG.yaml [--section.key value ...]`.

    Model and data are given as `class_path` + `init_args`, so any LightningModule / DataModule of the
    project (pretraining, each fine-tuning task) runs through the same command.
    """

    def __init__(self, args: list[str] | None = None, overwrite: bool = False, **kwargs: Any) -> None:
        """``overwrite``: `vl fit --overwrite` (``check_checkpoint_folders``)."""
        quiet_dependency_notices()
        self.overwrite = overwrite
        VLArgumentParser.argv = list(sys.argv[1:] if args is None else args)
        VLArgumentParser.merged_from = []
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", VLArgumentParser)
        # Every run counts skipped samples and leaves a resumable last.ckpt, whatever its config says.
        # Checkpoints also hold the global random state, so a resumed run draws the same dropout masks.
        # Progress bars have totals for evaluation over counted shards (added unless the config has a bar).
        kwargs.setdefault("trainer_defaults", {"callbacks": [SkipCounter(), SaveLastOnTrainEnd(), RandomState(),
                                                             VLProgressBar()]})
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
        has_bar = config.get("enable_progress_bar") is False or any(issubclass(t, ProgressBar) for t in have)
        defaults = self.trainer_defaults.get("callbacks", [])
        defaults = defaults if isinstance(defaults, list) else [defaults]
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": [
            cb for cb in defaults if type(cb) not in have and not (has_bar and isinstance(cb, ProgressBar))]}
        return super()._instantiate_trainer(config, callbacks)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """Lightning's, with each subcommand's usage and errors headed `vl fit`, not `vl [options] fit`."""
        super()._add_subcommands(parser, **kwargs)
        for subcommand, subparser in self._subcommand_parsers.items():
            subparser.prog = f"vl {subcommand}"

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's, with a help text that says where the model and data options are (and fit's --overwrite)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        text = SUBCOMMAND_HELP.format(command=subcommand) + (FIT_HELP if subcommand == "fit" else "")
        parser.description = f"{parser.description or ''}\n\n{text}".strip()
        return parser

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
        self._restore_hparams(ckpt_path)
        after = self.config[subcommand].get("model")
        for option in model_options(VLArgumentParser.argv):
            wanted, restored = model_value(before, option), model_value(after, option)
            if wanted != restored:
                raise ValueError(
                    f"--{option} {wanted!r} cannot apply next to --ckpt_path {ckpt_path}: the model is rebuilt "
                    f"with the checkpoint's hyper-parameters ({restored!r}). Drop the option, or train a new "
                    f"model with it (a fine-tuning config can start from this checkpoint with init_from)")

    def _restore_hparams(self, ckpt_path: Any) -> None:
        """Lightning's restoring of the checkpoint's hyper-parameters into the model config (the class and
        its keyword arguments, as ``VLModule`` records them), read under today's option names
        (``recorded_hparams``) so that a checkpoint of an earlier vl still evaluates."""
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        import torch

        hparams = dict(torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            class_path = hparams.pop("_class_path")
            hparams = {"class_path": class_path, "dict_kwargs": recorded_hparams(hparams)}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def before_instantiate_classes(self) -> None:
        """Refuse a GPU config on a machine without one, and to evaluate a model that has no trained weights
        (one line each saying what to pass), before any model is built."""
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        check_accelerator(self.config[subcommand].get("trainer"))
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
        ckpt_path = self.config_init[subcommand].get("ckpt_path")
        if ckpt_path == "last":
            self._check_last_exists(subcommand)
        if subcommand == "fit":
            check_checkpoint_folders(self.trainer, resuming=ckpt_path is not None, overwrite=self.overwrite)
            if ckpt_path is None:
                warn_random_weights(self.model, self.config[subcommand].get("model"))
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


def check_accelerator(trainer: Any) -> None:
    """NoGPUError when the trainer config asks for a GPU (``accelerator: gpu|cuda``) and none is usable;
    Lightning's own message ("No supported gpu backend found!") says neither which setting nor what to do."""
    accelerator = trainer.get("accelerator") if trainer is not None else None
    if not isinstance(accelerator, str) or accelerator.lower() not in ("gpu", "cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise NoGPUError(f"this config runs on a GPU (trainer.accelerator: {accelerator}) and this machine has none: "
                         f"add --trainer configs/trainer/cpu.yaml to run it on the CPU")


def checkpoint_folders(trainer: pl.Trainer) -> list[Path]:
    """The folders this run's ModelCheckpoints will write to, resolved as Lightning resolves them at setup
    (a ``dirpath`` of None: the first logger's version folder, a new one per run for CSV/TensorBoard)."""
    folders = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        dirpath = cb.dirpath
        resolve = getattr(cb, "_ModelCheckpoint__resolve_ckpt_dir", None)
        if dirpath is None and resolve is not None:
            dirpath = resolve(trainer)
        if dirpath is not None and "://" not in str(dirpath):
            folders.append(Path(dirpath))
    return folders


def check_checkpoint_folders(trainer: pl.Trainer, resuming: bool, overwrite: bool) -> None:
    """A new run (no ``--ckpt_path``) whose checkpoint folder already holds checkpoints would overwrite
    ``last.ckpt`` and mix its ``best-*`` files with the earlier run's: FileExistsError naming the options,
    unless ``overwrite`` (`vl fit --overwrite`), which deletes those checkpoints first (rank 0)."""
    if resuming:
        return
    for folder in checkpoint_folders(trainer):
        old = sorted(folder.glob(f"*{ModelCheckpoint.FILE_EXTENSION}")) if folder.is_dir() else []
        if not old:
            continue
        names = ", ".join(p.name for p in old[:3]) + (f" and {len(old) - 3} more" if len(old) > 3 else "")
        if not overwrite:
            raise FileExistsError(
                f"{folder} holds the checkpoints of an earlier run ({names}): resume it with --ckpt_path last, "
                f"start over with --overwrite (deletes them), or give this run another checkpoint folder")
        if trainer.is_global_zero:
            for path in old:
                path.unlink(missing_ok=True)
            _print_rank_zero(f"vl fit: --overwrite: deleted {len(old)} checkpoint(s) of an earlier run in {folder}")


@rank_zero_only
def _print_rank_zero(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def warn_random_weights(module: pl.LightningModule, model_config: Any) -> None:
    """One line when the video or text encoder of a new model starts from random weights although no config
    said so: a preset such as clip_base names a pretrained tower, and without ``video.pretrained`` (a local
    file) it would train from scratch without a word. ``pretrained: null`` in the part's config says
    "from scratch" explicitly and silences the line; ``init_from`` (fine-tuning) loads a whole checkpoint."""
    net = getattr(module, "model", None)
    init_args = model_config.get("init_args") if model_config is not None else None
    if init_args is None or init_args.get("init_from") or not hasattr(net, "video_encoder"):
        return
    config = getattr(net, "config", None) or {}
    random_parts = []
    for part in ("video", "text"):
        given = init_args.get(part) or {}
        encoder = getattr(net, f"{part}_encoder", None)
        if encoder is None or not hasattr(encoder, "pretrained_parameter_names"):
            continue
        if ("pretrained" in given and given["pretrained"] is None) or encoder.pretrained_parameter_names():
            continue
        name = (config.get(part) or {}).get("name", part)
        random_parts.append(f"{part} encoder ({name})")
    if random_parts:
        first = random_parts[0].split()[0]
        _print_rank_zero(
            f"vl: warning: the {' and '.join(random_parts)} of {init_args.get('model')} start from random weights: "
            f"set --model.init_args.{first}.pretrained PATH (see the config's header), or pretrained: null in the "
            f"config to train from scratch on purpose")


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
