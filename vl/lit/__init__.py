"""LightningModules and the DataModule: wiring of models, objectives, data and optimisers."""

from vl.lit.callbacks import CPUThreads, SaveLastOnTrainEnd, TrainingCPUTime
from vl.lit.data import SkipCounter, VideoTextDataModule
from vl.lit.module import BackboneConfig, VLModule
from vl.lit.pretrain import Objectives, PretrainModule

__all__ = ["BackboneConfig", "CPUThreads", "Objectives", "PretrainModule", "SaveLastOnTrainEnd", "SkipCounter",
           "TrainingCPUTime", "VLModule", "VideoTextDataModule"]
