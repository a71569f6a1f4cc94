"""Evaluation metrics as pure functions of embeddings, scores and predictions: no Lightning, no process group.

- ``retrieval``: ranks, R@K next to chance, median and mean rank, re-ranking changes with a sign test, and
  the non-finite checks every ranking makes (``NonFiniteError``).
- ``frame_order``: whether a model uses the order of the frames (reversed and shuffled clips, DESIGN §10).
- ``captioning``: BLEU, METEOR, ROUGE-L and CIDEr through pycocoevalcap.
- ``qa``: open-ended QA accuracy over an answer vocabulary, and multiple-choice accuracy.

The Lightning side (rows collected over an evaluation pass and gathered across DDP ranks, summaries, the
metrics and predictions files) is ``vl.lit.evaluation``; each task in ``vl.tasks`` scores with these.
"""
