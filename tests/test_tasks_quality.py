"""Quality of the fine-tuning tasks: the tiny model learns retrieval, open-ended QA, multiple choice and
captioning on synthetic clips well above their baselines, measured on the held-out test split through ``trainer.test`` (the code path of
``vl test``).

Data: ``vl data synth`` clips (32 px, 8 frames) of shapes that move, grow/shrink or appear one after
another, with paraphrased captions; per clip, open-ended questions about time (which way, grow or shrink,
which shape first) and about colour, and two multiple-choice items: "what happens" among time-reversed
and other events of the same objects (TGIF-Transition-like) and "which caption" among captions of the
same event with other objects (MSRVTT-MC-like).

Retrieval is fine-tuned from scratch (``vl_tiny``, VTC + VTM); its checkpoint is then the starting point
of captioning, QA and multiple choice, as users start them from a pretrained video-text checkpoint (from
scratch the decoder needs ~500 steps before its captions depend on the video). The video encoder sees
16x16 patches of single frames with sin-cos position tables and the text encoder is pooled by the mean of
its tokens, the recipe of ``tests/test_temporal.py`` (with 2-frame tubelets, learned positions and CLS
pooling, until session 4: t2v R@1 9.8% instead of ~27%, and VTM never learned).

VTM draws half its negatives by VTC similarity and half uniformly (``vtm_hard_fraction: 0.5``): with
hard negatives only, the dual encoder's hardest negatives here are the same objects doing the reverse,
which a fusion trained from scratch cannot tell apart at first, and VTM stayed at its prior (every pair
scored ~log(1/2), so re-ranking changed nothing and multiple choice by VTM stayed at chance). The VTM, QA
and multiple-choice heads read the mean of the fused text tokens (fusion ``pool: mean``): the from-scratch
text encoder's first token is the same for every caption, and with ``pool: cls`` (until session 5) the
VTM head alone ranked at t2v R@1 13.3 / 5.5 / 9.4% over training seeds 0 / 1 / 2, with ``mean`` at
13.7 / 16.4 / 14.8% (the dual encoder 27.3 / 23.1 / 25.0% then, 25.0 / 30.1 / 30.9% now).

Asserted: retrieval t2v R@1 >= 5x chance. Captioning CIDEr >= 2x the best constant caption. QA >= 2x the
majority answer and 10 points above a blind model that knows each question's type (the type already
narrows the answers). Multiple choice, each choice scored by the VTM head (``score: vtm``), >= 2x the
most common right position, on 640 questions about 320 held-out clips (a larger test split than the other
tasks', whose first 64 clips it shares): on the 128 questions of 64 clips the standard error was 4.3 points
and the most common right position an inflated 28.9%, and accuracy over nine pairs of retrieval and
fine-tuning seed ranged 54.7-66.4% against a bar of 57.8%; on 320 clips the same kind of runs give 57.5-59.5%
against 53.8% (BENCHMARKS.md). Per-type accuracies are printed: the "what happens" items stay the hardest
(~40%; open-ended direction and order near chance): the tiny model learns which kind of event a clip
shows but not where its object goes, not even the axis of motion, in 400 steps of retrieval.

VTM re-ranking of the top 128 (VTM log-odds + the dual encoder's logit, ``rerank_score: vtm+vtc``) is no
worse than the dual encoder, asserted as a test of 256 queries can show it: the queries it moves down are
not significantly more than those it moves up (one-sided exact sign test, p >= 0.05), by rank and by R@1
hit, and the VTM head alone ranks at >= 5x chance (so the re-ranker is a real ranker, not a constant). Over
seeds 0 / 1 / 2 re-ranking moved t2v R@1 from 25.00 to 24.61, 30.08 to 29.69 and 30.86 to 32.42 (51 down /
50 up, 46 / 47, 54 / 58 queries; p 0.50, 0.58, 0.68): neutral. Asserting "R@1 no lower" at one seed would
assert luck either way: one query is 0.39 points. ``VL_QUALITY_SEED=1 pytest tests/test_tasks_quality.py -s``
runs the whole file at another training seed.
``tests/test_tasks.py`` covers the scoring, training and evaluation code of every task.
Figures are printed; run with ``-s`` to see them.
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
from vl.tasks import CaptioningModule, RetrievalModule

pytestmark = pytest.mark.slow

FRAMES, SIZE = 8, 32
# vit_st_tiny on 8 x 2 x 2 patches of single frames with sin-cos position tables, and a from-scratch text
# encoder pooled by the mean of its tokens: the recipe of tests/test_temporal.py, which lets it learn time
TINY = {"num_frames": FRAMES, "img_size": SIZE, "patch_size": 16, "tubelet_size": 1, "pos_init": "sincos"}
TEXT = {"pool_type": "mean"}
# The heads (VTM, QA, multiple choice) read the mean of the fused text tokens: the from-scratch text encoder's
# first token is the same for every caption (VTM alone over seeds 0-2: t2v R@1 5.5-13.3% with pool: cls,
# 13.7-16.4% with mean)
FUSION = {"pool": "mean"}
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
    module = RetrievalModule(model="vl_tiny", video=TINY, text=TEXT, fusion=FUSION, vtm_weight=1.0, vtm_hard_fraction=0.5,
                             rerank_k=128, rerank_score="vtm+vtc", optim=optim(2e-3))
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


def test_vtm_reranking_is_no_worse_than_the_dual_encoder(retrieval_run: dict) -> None:
    """The VTM head ranks well on its own (>= 5x chance), and re-ranking the dual encoder's top 128 with it
    (VTM log-odds + the dual encoder's logit) makes no ranking measurably worse: over the 256 caption queries,
    the queries it moves down are not significantly more than those it moves up (one-sided exact sign test,
    p >= 0.05), by rank and by R@1 hit. A test split of 256 queries cannot tell a change of one or two
    queries from noise; the sign test says what it can tell. It fails a re-ranker that does harm: this
    model's VTM head alone as the re-ranker (``rerank_score: vtm``, seed 0: t2v R@1 25.00 -> 13.67, 167
    queries down and 53 up, p < 0.001), or the session-2 fixture's VTM log-odds + cosine (9.77 -> 8.59, 131
    down and 96 up, p = 0.012)."""
    m = retrieval_run["metrics"]
    alone = {k: m[f"rerank_vtm/t2v_{k}"] for k in ("R@1", "R@5")}  # the VTM head alone on the same top 128
    moved = {k: m[f"rerank/t2v_{k}"] for k in ("queries_down", "queries_up", "p_worse", "hits_lost",
                                                "hits_gained", "hits_p_worse")}  # vl.metrics.rank_changes
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
    assert moved["p_worse"] >= 0.05 and moved["hits_p_worse"] >= 0.05


def constant_caption_cider(root: str, references: dict[str, list[str]]) -> tuple[float, str]:
    """The best CIDEr any single training caption gets when given for every test clip, and that caption."""
    import tarfile

    from pycocoevalcap.cider.cider import Cider

    from vl.tasks.metrics import java_available, tokenize_captions

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

    Tested on 320 clips, not the fixture's 64: on 128 questions one answer is 0.78 points, the standard
    error at 60% is 4.3 points, and the most common right position is inflated by the small sample (28.9%
    where positions are shuffled uniformly). Over nine pairs of retrieval and fine-tuning seed, accuracy on
    the 64 clips ranged 54.7-66.4% against a bar of 57.8%; on 320 clips the same checkpoints give 57.5-59.5%
    against 53.8% (the most common right position 26.9%), 2.14-2.22x (BENCHMARKS.md)."""
    from vl.tasks import MultipleChoiceModule

    pl.seed_everything(SEED)
    # Each choice scored by the VTM head alone (the default); a low learning rate keeps what retrieval taught
    # it (measured on session 4's seed-0 checkpoint: 60.2% at 2e-4 and at 5e-4, 54.7% at 1e-3)
    module = MultipleChoiceModule(init_from=retrieval_run["ckpt"], score="vtm", optim=optim(2e-4))
    m = fit_and_test(module, synth, "mc", 300, tmp_path, batch_size=16, test_root=mc_test_synth)
    rows = [json.loads(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * MC_TEST_CLIPS  # "what happens" and "which caption" per clip
    majority = majority_position(rows)
    caption_rows = [r for r in rows if r["question_type"] == "caption"]
    caption_majority = majority_position(caption_rows)
    # the fixture's own 64 test clips (keys test0000000-test0000063), what this test measured until session 7
    first = [r for r in rows if int(r["key"].removeprefix("test")) < TEST_CLIPS]
    first_acc = 100.0 * sum(r["correct"] for r in first) / len(first)
    per_type = ", ".join(f"{k.split('/')[1]} {v:.1f}%" for k, v in sorted(m.items()) if k.startswith("accuracy/"))
    print(f"\nmultiple choice ({len(rows)} test questions on {MC_TEST_CLIPS} clips, 4 choices): accuracy "
          f"{m['accuracy']:.2f}% vs the most common right position {majority:.2f}% ({m['accuracy'] / majority:.2f}x);"
          f" per type: {per_type}; 'which caption' items: {m['accuracy/caption']:.2f}% vs {caption_majority:.2f}%; "
          f"on the first {TEST_CLIPS} clips {first_acc:.2f}% vs {majority_position(first):.2f}%")
    assert m["accuracy"] >= 2 * majority
