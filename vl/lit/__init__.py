"""LightningModules and the DataModule: wiring of models, objectives, data and optimisers."""

from vl.lit.callbacks import CPUThreads, SaveLastOnTrainEnd
from vl.lit.data import SkipCounter, VideoTextDataModule
from vl.lit.pretrain import Objectives, PretrainModule

__all__ = ["CPUThreads", "Objectives", "PretrainModule", "SaveLastOnTrainEnd", "SkipCounter", "VideoTextDataModule"]
