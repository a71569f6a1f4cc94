"""Quality of the fine-tuning tasks: the tiny model learns retrieval, open-ended QA, multiple choice and
captioning on synthetic clips well above their baselines, measured on the held-out test split through
``trainer.test`` (the code path of ``vl test``). Figures over seeds, and what each setting below is worth,
are in BENCHMARKS.md ("Fine-tuning quality"); run with ``-s`` to see this run's figures, and with
``VL_QUALITY_SEED=N`` to run the whole file at another training seed.

Data: ``vl data synth`` clips (32 px, 8 frames) of shapes that move, grow/shrink or appear one after
another, with paraphrased captions; per clip, open-ended questions about time (which way, grow or shrink,
which shape first) and about colour, and two multiple-choice items: "what happens" among time-reversed
and other events of the same objects (TGIF-Transition-like) and "which caption" among captions of the
same event with other objects (MSRVTT-MC-like).

Retrieval is fine-tuned from scratch (``vl_tiny``, VTC + VTM); its checkpoint is the starting point of
captioning, QA and multiple choice, as users start them from a pretrained video-text checkpoint. The model is
``vl_tiny`` as it comes, the tiny presets' from-scratch recipe (README, "Learning time": single-frame tokens
with sin-cos position tables, a mean-pooled text encoder, the fusion's heads reading the mean of its text
tokens), on 16x16 patches (a 2x2 grid per frame, as in ``tests/test_temporal.py``), and the tasks' AdamW takes
BERT/CLIP's betas and eps (0.98, 1e-6: PyTorch's scored lower here, BENCHMARKS.md). VTM draws half its
negatives by VTC similarity and half uniformly (``objectives.vtm_hard_fraction: 0.5``): the dual encoder's
hardest negatives here are the same objects doing the reverse, which a fusion trained from scratch cannot yet
tell apart.

Asserted, each with the margin over seeds that BENCHMARKS.md records: retrieval t2v R@1 >= 5x chance;
VTM re-ranking costs at most a bounded number of R@1 hits and of queries moved down (effect sizes, not a
significance test at a fixed alpha, which a neutral re-ranker fails by design one run in 1/alpha); the
VTM head alone >= 5x chance; captioning CIDEr >= 2x the best constant caption; QA >= 2x the majority
answer and 10 points above a blind model that knows each question's type; multiple choice by the VTM
head (``score: vtm``) >= 2x the most common right position, on 640 questions about 320 held-out clips
(more than the other tasks' 64 clips, so that one answer moves accuracy by 0.16 points, not 0.78).
``tests/test_tasks.py`` covers the scoring, training and evaluation code of every task.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from vl.lit.data import VideoTextDataModule
from vl.lit.optim import OptimConfig
from vl.tasks import CaptioningModule, RetrievalModule, RetrievalObjectives

pytestmark = pytest.mark.slow

FRAMES, SIZE = 8, 32
TINY = {"num_frames": FRAMES, "img_size": SIZE, "patch_size": 16}  # 8 x 2 x 2 tokens a clip
# Training seed of every test here (the clips are the same for all); VL_QUALITY_SEED=1 pytest ... re-runs
# the file at another one
SEED = int(os.environ.get("VL_QUALITY_SEED", "0"))
TRAIN_CLIPS, TEST_CLIPS = 384, 64
# Multiple choice is tested on more clips (see test_multiple_choice_beats_the_majority_choice_2x)
MC_TEST_CLIPS = 320


def write_synth(out: Path, train: int, test: int) -> str:
    """``vl data synth`` shards of ``train`` training and ``test`` test clips in ``out``; returns ``out``."""
    from datapipes.cli import main as data_main

    status = data_main(["synth", "--out", str(out), "--train", str(train), "--val", "0", "--test", str(test),
                        "--frames", str(FRAMES), "--size", str(SIZE), "--maxcount", "128", "--workers", "2", "--quiet"])
    assert status == 0
    return str(out)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> str:
    """Synthetic shards written once: 384 training clips, 64 test clips."""
    return write_synth(tmp_path_factory.mktemp("task_synth"), TRAIN_CLIPS, TEST_CLIPS)


@pytest.fixture(scope="session")
def mc_test_synth(tmp_path_factory) -> str:
    """A larger test split for multiple choice: 320 held-out clips (640 questions), the first 64 of them the
    fixture's test clips (the generator draws each clip from (seed, split, index) alone; writing those 64
    again takes under a second: 320 clips take ~2 s)."""
    return write_synth(tmp_path_factory.mktemp("mc_test_synth"), 0, MC_TEST_CLIPS)


def datamodule(root: str, text_field: str, steps: int, batch_size: int = 32) -> VideoTextDataModule:
    return VideoTextDataModule(
        root=root, text_field=text_field, num_frames=FRAMES, frame_size=SIZE, max_text_len=24,
        train_sampling="uniform", crop_scale=(0.8, 1.0), hflip=0.0, batch_size=batch_size, eval_batch_size=64,
        num_workers=1, persistent_workers=False, batches_per_epoch=steps, shuffle_buffer=256, seed=0)


def fit_and_test(module: pl.LightningModule, root: str, text_field: str, steps: int, out: Path,
                 batch_size: int = 32, test_root: str | None = None) -> dict:
    """Train ``steps`` steps on ``root``'s training split, test on the held-out split of ``test_root`` (default
    ``root``); returns test_metrics.json (checkpoint in ``out``)."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(1)  # 1 thread: reproducible float sums, and no oversubscription with the decoding worker
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, max_epochs=1, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=str(out))
    data = datamodule(root, text_field, steps, batch_size)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(out / "model.ckpt")
    test_data = data if test_root is None else datamodule(test_root, text_field, steps, batch_size)
    trainer.test(module, datamodule=test_data, verbose=False)
    return json.loads((out / "test_metrics.json").read_text())


def optim(lr: float, warmup: int = 20) -> OptimConfig:
    return OptimConfig(lr=lr, warmup_steps=warmup, weight_decay=0.01)


@pytest.fixture(scope="session")
def retrieval_run(synth: str, tmp_path_factory) -> dict:
    """``vl_tiny`` fine-tuned from scratch for retrieval (VTC + VTM); its test metrics and checkpoint."""
    out = tmp_path_factory.mktemp("retrieval")
    pl.seed_everything(SEED)
    module = RetrievalModule(model="vl_tiny", video=TINY,
                             objectives=RetrievalObjectives(vtm=1.0, vtm_hard_fraction=0.5), rerank_k=128,
                             rerank_score="vtm+vtc", optim=optim(2e-3))
    metrics = fit_and_test(module, synth, "caption", 400, out)
    return {"metrics": metrics, "ckpt": str(out / "model.ckpt"), "dir": out}


def test_retrieval_beats_chance(retrieval_run: dict) -> None:
    m = retrieval_run["metrics"]
    chance = m["t2v_chance_R@1"]
    print(f"\nretrieval ({TEST_CLIPS} test clips, {4 * TEST_CLIPS} captions): t2v R@1 {m['t2v_R@1']:.2f}% "
          f"(chance {chance:.2f}%, {m['t2v_R@1'] / chance:.1f}x), R@5 {m['t2v_R@5']:.2f}, MdR {m['t2v_MdR']:.0f}; "
          f"v2t R@1 {m['v2t_R@1']:.2f}")
    assert m["t2v_R@1"] >= 5 * chance
    rows = [json.loads(line) for line in (retrieval_run["dir"] / "test_predictions.jsonl").read_text().splitlines()]
    assert sum(r["direction"] == "t2v" and r["method"] == "dual" for r in rows) == 4 * TEST_CLIPS


# Bounds on what re-ranking may cost, as effect sizes (not significance at a fixed alpha: a neutral re-ranker
# fails a p >= 0.05 test one run in twenty). A neutral re-ranker moves ~20 R@1 hits and ~100-130 ranks of 256
# queries either way, so its net losses have a standard deviation of ~4.5 hits and ~11 queries: 15 hits and 64
# queries are more than 3 and 5 standard deviations. A harmful one exceeds both (the VTM head alone as the
# re-ranker on this fixture: 29 hits and 114 queries net, BENCHMARKS.md).
MAX_NET_HITS_LOST = 15  # of 256 queries: about 6 points of R@1
MAX_NET_QUERIES_DOWN = 64  # a quarter of the queries


def test_vtm_reranking_is_no_worse_than_the_dual_encoder(retrieval_run: dict) -> None:
    """The VTM head ranks well on its own (>= 5x chance), and re-ranking the dual encoder's top 128 with it
    (VTM log-odds + the dual encoder's logit) costs no more than ``MAX_NET_HITS_LOST`` R@1 hits net (hits
    lost minus hits gained) and moves no more than ``MAX_NET_QUERIES_DOWN`` queries net down, over the 256
    caption queries."""
    m = retrieval_run["metrics"]
    alone = {k: m[f"rerank_vtm/t2v_{k}"] for k in ("R@1", "R@5")}  # the VTM head alone on the same top 128
    moved = {k: m[f"rerank/t2v_{k}"] for k in ("queries_down", "queries_up", "p_worse", "hits_lost",
                                                "hits_gained", "hits_p_worse")}  # vl.evaluation.retrieval.rank_changes
    chance = m["t2v_chance_R@1"]
    print(f"\nVTM head alone: t2v R@1 {alone['R@1']:.2f}% ({alone['R@1'] / chance:.1f}x chance), "
          f"R@5 {alone['R@5']:.2f}; dual encoder {m['t2v_R@1']:.2f}%")
    print(f"VTM re-ranking of the top 128 (VTM log-odds + dual-encoder logit): t2v R@1 {m['rerank/t2v_R@1']:.2f} "
          f"(dual encoder {m['t2v_R@1']:.2f}), R@5 {m['rerank/t2v_R@5']:.2f} ({m['t2v_R@5']:.2f}), MnR "
          f"{m['rerank/t2v_MnR']:.2f} ({m['t2v_MnR']:.2f}); v2t R@1 {m['rerank/v2t_R@1']:.2f} ({m['v2t_R@1']:.2f}); "
          f"of {4 * TEST_CLIPS} queries {moved['queries_down']:.0f} moved down and {moved['queries_up']:.0f} up "
          f"(sign test p = {moved['p_worse']:.3f}), {moved['hits_lost']:.0f} lost their R@1 hit and "
          f"{moved['hits_gained']:.0f} gained one (p = {moved['hits_p_worse']:.3f})")
    assert alone["R@1"] >= 5 * chance
    assert moved["hits_lost"] - moved["hits_gained"] <= MAX_NET_HITS_LOST
    assert moved["queries_down"] - moved["queries_up"] <= MAX_NET_QUERIES_DOWN


def constant_caption_cider(root: str, references: dict[str, list[str]]) -> tuple[float, str]:
    """The best CIDEr any single training caption gets when given for every test clip, and that caption."""
    import tarfile

    from pycocoevalcap.cider.cider import Cider

    from vl.evaluation.captioning import java_available, tokenize_captions

    captions: set[str] = set()
    for tar_path in sorted(Path(root).glob("train-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    captions.update(json.loads(tar.extractfile(member).read())["captions"])
    candidates = sorted(captions)
    java = java_available()  # tokenised as caption_metrics tokenises (PTB with Java)
    refs = tokenize_captions(references, java)
    cands = tokenize_captions({i: [c] for i, c in enumerate(candidates)}, java)
    best = max((Cider().compute_score(refs, {k: cands[i] for k in refs})[0], i) for i in range(len(candidates)))
    return 100.0 * best[0], candidates[best[1]]


def test_captioning_beats_the_best_constant_caption(synth: str, retrieval_run: dict, tmp_path: Path) -> None:
    pl.seed_everything(SEED)
    module = CaptioningModule(init_from=retrieval_run["ckpt"], max_len=16, beam_size=2, optim=optim(2e-3))
    m = fit_and_test(module, synth, "caption", 250, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    baseline, caption = constant_caption_cider(synth, {r["key"]: r["references"] for r in rows})
    meteor = "n/a (no Java)" if m["METEOR"] is None else f"{m['METEOR']:.2f}"
    print(f"\ncaptioning ({len(rows)} test clips, beam 2): CIDEr {m['CIDEr']:.2f} vs best constant caption "
          f"{baseline:.2f} ({caption!r}); BLEU-4 {m['BLEU-4']:.2f}, METEOR {meteor}, ROUGE-L {m['ROUGE-L']:.2f}; "
          f"e.g. {rows[0]['prediction']!r} for {rows[0]['references'][0]!r}")
    assert m["CIDEr"] >= 2 * baseline


def majority_position(rows: list[dict]) -> float:
    """Accuracy (percent) of always picking the choice position that is right most often in ``rows``."""
    from collections import Counter

    return 100.0 * Counter(r["answer_idx"] for r in rows).most_common(1)[0][1] / len(rows)


def type_prior(rows: list[dict]) -> float:
    """Accuracy (percent) of a blind model that knows each question's type and answers the type's most common
    test answer: what the question alone is worth, an upper bound for a model that ignores the video."""
    from collections import Counter

    by_type: dict[str, Counter] = {}
    for r in rows:
        by_type.setdefault(r["question_type"], Counter())[r["answer"]] += 1
    return 100.0 * sum(c.most_common(1)[0][1] for c in by_type.values()) / len(rows)


def test_open_ended_qa_beats_the_majority_answer_2x(synth: str, retrieval_run: dict, tmp_path: Path) -> None:
    from vl.tasks import QAModule

    pl.seed_everything(SEED)
    module = QAModule(init_from=retrieval_run["ckpt"], optim=optim(2e-3))
    m = fit_and_test(module, synth, "qa", 300, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    blind = type_prior(rows)
    per_type = ", ".join(f"{k.split('/')[1]} {v:.1f}%" for k, v in sorted(m.items()) if k.startswith("accuracy/"))
    print(f"\nopen-ended QA ({len(rows)} test questions): accuracy {m['accuracy']:.2f}% vs majority answer "
          f"{m['majority_accuracy']:.2f}% ({m['accuracy'] / m['majority_accuracy']:.1f}x) and a blind model that "
          f"knows each question's type {blind:.2f}%; per type: {per_type}")
    assert m["accuracy"] >= 2 * m["majority_accuracy"]
    assert m["accuracy"] >= blind + 10.0  # the answers come from the video, not from the question alone


def test_multiple_choice_beats_the_majority_choice_2x(synth: str, mc_test_synth: str, retrieval_run: dict,
                                                      tmp_path: Path) -> None:
    """Multiple choice by the VTM head >= 2x the most common right position, on 640 held-out questions.

    The most common right position is computed on the questions tested, so it is at least as high as any
    position baseline learned from training; accuracy on the fixture's own 64 test clips is printed too."""
    from vl.tasks import MultipleChoiceModule

    pl.seed_everything(SEED)
    # Each choice scored by the VTM head alone (the default); a low learning rate keeps what retrieval taught it
    module = MultipleChoiceModule(init_from=retrieval_run["ckpt"], score="vtm", optim=optim(2e-4))
    m = fit_and_test(module, synth, "mc", 300, tmp_path, batch_size=16, test_root=mc_test_synth)
    rows = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * MC_TEST_CLIPS  # "what happens" and "which caption" per clip
    majority = majority_position(rows)
    caption_rows = [r for r in rows if r["question_type"] == "caption"]
    caption_majority = majority_position(caption_rows)
    # the fixture's own 64 test clips (keys test0000000-test0000063)
    first = [r for r in rows if int(r["key"].removeprefix("test")) < TEST_CLIPS]
    first_acc = 100.0 * sum(r["correct"] for r in first) / len(first)
    per_type = ", ".join(f"{k.split('/')[1]} {v:.1f}%" for k, v in sorted(m.items()) if k.startswith("accuracy/"))
    print(f"\nmultiple choice ({len(rows)} test questions on {MC_TEST_CLIPS} clips, 4 choices): accuracy "
          f"{m['accuracy']:.2f}% vs the most common right position {majority:.2f}% ({m['accuracy'] / majority:.2f}x);"
          f" per type: {per_type}; 'which caption' items: {m['accuracy/caption']:.2f}% vs {caption_majority:.2f}%; "
          f"on the first {TEST_CLIPS} clips {first_acc:.2f}% vs {majority_position(first):.2f}%")
    assert m["accuracy"] >= 2 * majority
