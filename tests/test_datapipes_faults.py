"""Every fault of issue 3 item 7: counted by reason, training goes on; hopeless input is a clear error."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import FAULTS, good_sample, write_tar

from datapipes.pipeline import ClipConfig, build_eval_loader, build_train_loader

CFG = ClipConfig(num_frames=8, size=32, max_text_len=8)


def _skipped(batches) -> Counter:
    total = Counter()
    for b in batches:
        total.update(b.skipped)
    return total


def test_each_fault_is_counted_once_in_evaluation(fault_shards, tokenizer):
    batches = list(build_eval_loader(fault_shards["faults"], tokenizer, CFG, batch_size=2))
    keys = [k for b in batches for k in b.keys]
    assert keys == ["good0", "short", "imageasvideo", "good1", "good2"]
    expected = Counter(reason for reason in FAULTS.values() if reason)
    expected["padded_clip"] = 1  # "short": kept, padded from 3 to 8 frames, and counted
    assert _skipped(batches) == expected  # exact: every sample is read once
    by_key = {k: (b, i) for b in batches for i, k in enumerate(b.keys)}
    batch, i = by_key["short"]
    assert batch.frame_mask[i].tolist() == [True] * 3 + [False] * 5  # 3 frames padded to 8
    batch, i = by_key["imageasvideo"]
    assert batch.frame_mask[i].sum() == 1  # JPEG bytes in KEY.mp4: a 1-frame clip


def test_images_can_be_refused_where_videos_are_expected(fault_shards, tokenizer):
    cfg = ClipConfig(num_frames=8, size=32, max_text_len=8, allow_images=False)
    batches = list(build_eval_loader(fault_shards["faults"], tokenizer, cfg, batch_size=4))
    assert "imageasvideo" not in [k for b in batches for k in b.keys]
    assert _skipped(batches)["not_a_video"] == 1


def test_truncated_tar_keeps_earlier_samples(fault_shards, tokenizer):
    batches = list(build_eval_loader(fault_shards["truncated"], tokenizer, CFG, batch_size=8))
    keys = [k for b in batches for k in b.keys]
    assert keys[:3] == ["t0", "t1", "t2"] and len(keys) < 6
    skipped = _skipped(batches)
    assert skipped["truncated_tar"] == 1
    assert sum(skipped.values()) <= 2  # at most the cut sample itself, as a partial sample


def test_training_goes_on_through_every_fault(fault_shards, tokenizer):
    shards = [fault_shards["faults"], fault_shards["truncated"], fault_shards["good"]]
    loader = build_train_loader(shards, tokenizer, CFG, batch_size=4, batches_per_epoch=12, num_workers=2,
                                shuffle_buffer=8)
    batches = list(loader)
    assert len(batches) == 12 and all(b.batch_size == 4 for b in batches)
    skipped = _skipped(batches)
    for reason in set(FAULTS.values()) - {None}:
        assert skipped[reason] > 0, reason
    assert skipped["truncated_tar"] > 0


def test_skips_after_the_last_sample_reach_the_last_batch(tmp_path, tokenizer):
    samples = [good_sample("a"), good_sample("b"), {"__key__": "c", "mp4": b"", "txt": "x"},
               {"__key__": "d", "txt": "no video"}]
    shard = write_tar(tmp_path / "tail.tar", samples)
    batches = list(build_eval_loader(shard, tokenizer, CFG, batch_size=2))
    assert len(batches) == 1 and batches[0].skipped == {"empty_file": 1, "no_video": 1}


def test_only_bad_samples_is_an_error_not_a_hang(tmp_path, tokenizer):
    bad = write_tar(tmp_path / "bad.tar", [{"__key__": f"b{i}", "mp4": b"\x00" * 100, "txt": "x"} for i in range(5)])
    loader = build_train_loader(bad, tokenizer, CFG, batch_size=2, batches_per_epoch=2, max_consecutive_skips=50)
    with pytest.raises(RuntimeError, match="50 samples in a row were skipped.*decode_error"):
        list(loader)
    loader = build_train_loader(bad, tokenizer, CFG, batch_size=2, batches_per_epoch=2, num_workers=1,
                                max_consecutive_skips=50)
    with pytest.raises(RuntimeError, match="in a row were skipped"):  # also from a worker process
        list(loader)


def test_unreadable_shards_are_an_error_not_a_hang(tokenizer):
    loader = build_train_loader("pipe:exit 1", tokenizer, CFG, batch_size=2, batches_per_epoch=2,
                                max_consecutive_skips=20)
    with pytest.raises(RuntimeError, match="shards read gave no sample"):
        list(loader)


def test_question_modes_count_samples_without_questions(tmp_path, tokenizer):
    qa_ok = good_sample("qa1", qa=[{"question": "what colour?", "answer": "grey"},
                                    {"question": "which?", "choices": ["a", "b", "c"], "answer_idx": 2}])
    no_qa = good_sample("plain")
    bad_qa = good_sample("bad", qa=[{"question": "which?", "choices": "not a list", "answer_idx": 0}])
    shard = write_tar(tmp_path / "qa.tar", [qa_ok, no_qa, bad_qa])
    cfg = ClipConfig(num_frames=4, size=32, max_text_len=12, text_field="mc")
    (batch,) = list(build_eval_loader(shard, tokenizer, cfg, batch_size=4))
    assert batch.keys == ["qa1"] and batch.answer_idx.tolist() == [2]
    assert batch.choice_ids.shape == (1, 3, 12) and batch.choice_mask[0, :, 0].tolist() == [1, 1, 1]
    assert batch.skipped == {"no_question": 1, "bad_qa": 1}
    cfg = ClipConfig(num_frames=4, size=32, max_text_len=12, text_field="qa")
    (batch,) = list(build_eval_loader(shard, tokenizer, cfg, batch_size=4))
    assert batch.answer == ["grey"] and batch.texts == ["what colour?"]
    assert batch.references == [["a grey clip gets brighter"]]
    assert batch.skipped == {"no_question": 2}


def test_one_sample_per_question(tmp_path, tokenizer):
    qa = [{"question": f"question {i}?", "answer": f"answer {i}"} for i in range(3)]
    shard = write_tar(tmp_path / "q.tar", [good_sample("v", qa=qa)])
    cfg = ClipConfig(num_frames=4, size=32, max_text_len=12, text_field="qa")
    (batch,) = list(build_eval_loader(shard, tokenizer, cfg, batch_size=4))
    assert batch.keys == ["v", "v", "v"] and batch.answer == ["answer 0", "answer 1", "answer 2"]
    assert batch.video.shape[0] == 3 and json.dumps(batch.meta[0])


def test_tar_cut_between_members_is_counted(tmp_path, tokenizer):
    import gzip
    import tarfile

    full = write_tar(tmp_path / "whole.tar", [good_sample(f"t{i}") for i in range(3)])
    with tarfile.open(full) as tar:
        boundary = [m.offset for m in tar.getmembers() if m.name == "t2.json"][0]
    data = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:boundary])  # tarfile alone would call this a whole archive
    (tmp_path / "whole.tar.gz").write_bytes(gzip.compress(data))
    cut = list(build_eval_loader(str(tmp_path / "cut.tar"), tokenizer, CFG, batch_size=8))
    assert [k for b in cut for k in b.keys] == ["t0", "t1"] and _skipped(cut) == {"truncated_tar": 1}
    whole = list(build_eval_loader([full, str(tmp_path / "whole.tar.gz")], tokenizer, CFG, batch_size=8))
    assert len([k for b in whole for k in b.keys]) == 6 and _skipped(whole) == {}


def test_bad_clip_bounds_are_counted(tmp_path, tokenizer):
    samples = [good_sample("ok", start=1.0, end=2.0), good_sample("past", start=30.0),
               good_sample("reversed", start=2.0, end=1.0), good_sample("text", start="soon")]
    shard = write_tar(tmp_path / "bounds.tar", samples)
    (batch,) = list(build_eval_loader(shard, tokenizer, CFG, batch_size=4))
    assert batch.keys == ["ok"] and batch.skipped == {"bad_clip_bounds": 3}


def test_padded_clips_are_counted_and_do_not_stop_training(tmp_path, tokenizer):
    """Short videos are kept, padded, and counted as ``padded_clip`` beside the skips; they are good
    samples, so a stream of them is not 'too many skips in a row'."""
    from conftest import encode_indexed_clip

    shard = write_tar(tmp_path / "short.tar", [
        {"__key__": f"s{i}", "mp4": encode_indexed_clip(num_frames=3), "txt": "three frames"} for i in range(4)])
    loader = build_train_loader(shard, tokenizer, CFG, batch_size=2, batches_per_epoch=3, shuffle_buffer=1,
                                max_consecutive_skips=2)
    batches = list(loader)
    assert len(batches) == 3 and all(b.frame_mask.sum(1).tolist() == [3, 3] for b in batches)
    assert _skipped(batches)["padded_clip"] >= 6 and set(_skipped(batches)) == {"padded_clip"}
    from datapipes.pipeline import SKIP_REASONS

    assert "padded_clip" in SKIP_REASONS  # so the Lightning SkipCounter reports it by name
