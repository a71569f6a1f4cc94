"""Fine-tuning tasks, one file each (head, training and evaluation hooks, metrics):

- ``RetrievalModule`` (retrieval.py): VTC + VTM fine-tuning; dual-encoder ranking, VTM re-ranking, dual-softmax.
- ``QAModule`` (qa.py): open-ended QA, a classifier over the top-K training answers.
- ``MultipleChoiceModule`` (multiple_choice.py): VTM scoring of each choice, softmax over the choices.
- ``CaptioningModule`` (captioning.py): the fusion as a causal decoder; greedy and beam search.

Each is a ``vl.lit.module.VLModule`` (backbone, speed switches, training step, checkpoints, reports and
``vl predict`` shared with pretraining) for ``vl fit|test|predict -c configs/finetune/<benchmark>_<task>.yaml``.
"""

from vl.tasks.captioning import CaptioningModule
from vl.tasks.multiple_choice import MultipleChoiceModule
from vl.tasks.qa import QAModule
from vl.tasks.retrieval import RetrievalModule, RetrievalObjectives

__all__ = ["CaptioningModule", "MultipleChoiceModule", "QAModule", "RetrievalModule", "RetrievalObjectives"]
