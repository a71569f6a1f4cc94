"""Each base pretraining config runs as `vl fit -c CONFIG` on a CPU, from the weight files it names.

For every `configs/pretrain/*_base.yaml` the test writes a checkpoint of the layout the config's header asks
for, built with random weights by the reference library itself at a tiny size and saved in that library's
format (timm ViT safetensors, the official Video Swin release's ``backbone.*`` state dict, transformers'
``VideoMAEModel.save_pretrained``, an open_clip state dict; for VIOLET also a local BERT folder with its
tokenizer and a DALL-E ``encoder.pkl``), points the config at them and at the tiny session shards with
command-line overrides only (sizes, `--trainer configs/trainer/cpu.yaml`, one step), and runs `vl fit`
in this process. A probe checks, after Lightning's setup and before the first step, that parameters of the
model equal the file's tensors (so the weights were loaded, not just accepted), and that the one training
step has a finite loss. Everything the config writes (logs, checkpoints) goes to a temporary folder.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from conftest import save_as_dall_e_pickle
from vl.cli import main as vl_main

ROOT = Path(__file__).resolve().parents[1]
CPU_TRAINER = str(ROOT / "configs" / "trainer" / "cpu.yaml")

W, DEPTH, HEADS, PATCH, SIZE = 64, 2, 2, 8, 32  # the tiny ViT every ViT-family file is built at
BERT_KEYS = ("encoder.layer.0.intermediate.dense.weight", "embeddings.word_embeddings.weight")


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter, so that no loaded tensor sits at a value a fresh model would also have."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


# -- weight files, one per config --------------------------------------------------------------------------
def timm_vit_file(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    ref = perturb(VisionTransformer(img_size=SIZE, patch_size=PATCH, embed_dim=W, depth=DEPTH, num_heads=HEADS,
                                    num_classes=10), 0)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = folder / "model.safetensors"
    save_file(state, str(path))
    return str(path), state


def videomae_folder(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig(image_size=SIZE, patch_size=PATCH, num_frames=4, tubelet_size=2, hidden_size=W,
                            num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * W,
                            use_mean_pooling=True)
    ref = perturb(VideoMAEModel(config), 1)
    out = folder / "videomae-base"
    ref.save_pretrained(out)
    return str(out), ref.state_dict()


def open_clip_file(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    import open_clip

    ref = perturb(open_clip.model.CLIP(
        embed_dim=W,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=DEPTH, width=W, head_width=W // HEADS, patch_size=PATCH,
                                                 image_size=SIZE),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=W, heads=HEADS, layers=1),
    ), 2)
    path = folder / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)
    return str(path), ref.state_dict()


def official_swin_file(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """torchvision's Video Swin at swin3d_tiny's sizes under the official release's key names, saved as the
    release is (``{"meta", "state_dict"}`` with ``backbone.*`` and ``cls_head.*`` keys)."""
    from test_pretrained_swin import torchvision_tiny, torchvision_to_official

    state = torchvision_to_official(torchvision_tiny(seed=3).state_dict(), (2, 2, 2))
    path = folder / "swin_base_patch244_window877_kinetics600_22k.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": state}, path)
    return str(path), state


def bert_folder(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """A tiny BERT saved as Hugging Face saves bert-base-uncased: model and (the packaged uncased) tokenizer."""
    from transformers import BertConfig, BertModel

    from vl.models.hub import load_tokenizer

    ref = perturb(BertModel(BertConfig(vocab_size=30522, hidden_size=W, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=128)), 4)
    out = folder / "bert-base-uncased"
    ref.save_pretrained(out)
    load_tokenizer("minilm").save_pretrained(out)
    return str(out), ref.state_dict()


def dalle_pickle(folder: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """A tiny DALL-E dVAE encoder pickled as OpenAI's encoder.pkl is (its classes named from `dall_e`)."""
    from vl.models import dalle

    encoder = perturb(dalle.DalleEncoder(n_hid=8, n_blk_per_group=1, vocab_size=64), 5)
    path = folder / "encoder.pkl"
    save_as_dall_e_pickle(encoder, path)
    assert b"dall_e.encoder" in path.read_bytes()
    return str(path), encoder.state_dict()


# -- what each config is given and what must have loaded ------------------------------------------------------
def header_text_option(name: str, bert: str) -> list[str]:
    """The text-weights option the config's header documents, pointed at the local BERT folder."""
    header = (ROOT / "configs" / "pretrain" / f"{name}.yaml").read_text()
    match = re.search(r"(--model\.init_args\.text) '(\{.*?\})'", header)
    assert match, f"{name}.yaml's header no longer says how to give the text weights"
    assert "/path/to/bert-base-uncased" in match.group(2)
    return [match.group(1), match.group(2).replace("/path/to/bert-base-uncased", bert)]


def text_checks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"text_encoder.model.{k}": state[k] for k in BERT_KEYS}


def vit_options(frames: int, path: str) -> list[str]:
    return ["--model.init_args.video.embed_dim", str(W), "--model.init_args.video.depth", str(DEPTH),
            "--model.init_args.video.num_heads", str(HEADS), "--model.init_args.video.patch_size", str(PATCH),
            "--model.init_args.video.num_frames", str(frames), "--model.init_args.video.img_size", str(SIZE),
            "--model.init_args.video.pretrained", path]


def allinone(folder: Path):
    path, state = timm_vit_file(folder)
    bert, bert_state = bert_folder(folder)
    args = [*vit_options(3, path), *header_text_option("allinone_base", bert), "--data.init_args.num_frames", "3"]
    # timm's blocks load unchanged (the patch kernel is inflated, the CLS token takes its position)
    checks = {"video_encoder.blocks.0.mlp.fc1.weight": state["blocks.0.mlp.fc1.weight"],
              "video_encoder.blocks.1.attn.qkv.weight": state["blocks.1.attn.qkv.weight"],
              "video_encoder.pos_embed_space": state["pos_embed"][:, 1:], **text_checks(bert_state)}
    return args, checks


def videomae(folder: Path):
    path, state = videomae_folder(folder)
    bert, bert_state = bert_folder(folder)
    args = [*vit_options(4, path), *header_text_option("videomae_base", bert), "--data.init_args.num_frames", "4"]
    checks = {"video_encoder.blocks.0.mlp.fc1.weight": state["encoder.layer.0.intermediate.dense.weight"],
              "video_encoder.blocks.1.mlp.fc2.weight": state["encoder.layer.1.output.dense.weight"],
              "video_encoder.patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
              **text_checks(bert_state)}
    return args, checks


def clip(folder: Path):
    path, state = open_clip_file(folder)
    bert, bert_state = bert_folder(folder)
    args = ["--model.init_args.video.width", str(W), "--model.init_args.video.layers", str(DEPTH),
            "--model.init_args.video.heads", str(HEADS), "--model.init_args.video.patch_size", str(PATCH),
            "--model.init_args.video.output_dim", str(W), "--model.init_args.video.temporal_layers", "1",
            "--model.init_args.video.num_frames", "2", "--model.init_args.video.img_size", str(SIZE),
            "--model.init_args.video.pretrained", path,
            *header_text_option("clip_base", bert), "--data.init_args.num_frames", "2"]
    checks = {f"video_encoder.{k}": state[k] for k in ("visual.transformer.resblocks.0.mlp.c_fc.weight",
                                                       "visual.proj", "visual.class_embedding")}
    checks.update(text_checks(bert_state))
    return args, checks


def violet(folder: Path):
    swin, swin_state = official_swin_file(folder)
    bert, bert_state = bert_folder(folder)
    pkl, dalle_state = dalle_pickle(folder)
    args = ["--model.init_args.video.width", "32", "--model.init_args.video.depths", "[2, 2, 2]",
            "--model.init_args.video.num_heads", "[1, 2, 4]", "--model.init_args.video.window_size", "[2, 4, 4]",
            "--model.init_args.video.num_frames", "4", "--model.init_args.video.img_size", str(SIZE),
            "--model.init_args.video.pretrained", swin,
            "--model.init_args.text.pretrained", bert, "--model.init_args.tokenizer", bert, "--data.init_args.tokenizer", bert,
            "--model.init_args.objectives.mvm_config.vq.path", pkl, "--data.init_args.num_frames", "4"]
    checks = {"video_encoder.stages.0.blocks.0.mlp.0.weight": swin_state["backbone.layers.0.blocks.0.mlp.fc1.weight"],
              "video_encoder.stages.2.blocks.1.attn.qkv.weight": swin_state["backbone.layers.2.blocks.1.attn.qkv.weight"],
              "video_encoder.norm.weight": swin_state["backbone.norm.weight"], **text_checks(bert_state)}
    return args, checks, dalle_state


CONFIGS = {"allinone_base": allinone, "videomae_base": videomae, "clip_base": clip, "violet_base": violet}


class Probe:
    """Wraps PretrainModule's hooks: the model's state when training starts (after Lightning's setup and the
    optimiser's creation, before the first step) and every training-step loss."""

    def __init__(self, monkeypatch) -> None:
        from vl.lit.pretrain import PretrainModule

        self.state: dict[str, torch.Tensor] = {}
        self.mvm_state: dict[str, torch.Tensor] = {}
        self.losses: list[float] = []
        probe, step = self, PretrainModule.training_step
        parent_start = getattr(PretrainModule, "on_train_start")

        def on_train_start(module) -> None:
            parent_start(module)
            probe.state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
            probe.mvm_state = {k: v.detach().clone() for k, v in module.state_dict().items() if ".encoder.blocks." in k}

        def training_step(module, batch, batch_idx):
            loss = step(module, batch, batch_idx)
            if loss is not None:
                probe.losses.append(float(loss.detach()))
            return loss

        monkeypatch.setattr(PretrainModule, "on_train_start", on_train_start)
        monkeypatch.setattr(PretrainModule, "training_step", training_step)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_base_config_loads_its_weights_and_trains_a_step(name, synth_dir, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    made = CONFIGS[name](weights)
    args, checks = made[0], made[1]
    probe = Probe(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)  # the config's runs/<name>/ (logs, checkpoints) lands here
    argv = ["fit", "-c", str(ROOT / "configs" / "pretrain" / f"{name}.yaml"), "--trainer", CPU_TRAINER,
            "--trainer.strategy", "auto", "--trainer.max_steps", "1", "--trainer.num_sanity_val_steps", "0",
            "--data.init_args.train_shards", synth_dir["train"], "--data.init_args.val_shards", synth_dir["val"],
            "--data.init_args.frame_size", str(SIZE), "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0", "--data.init_args.shuffle_buffer", "8",
            "--model.init_args.fusion.depth", "1", "--model.init_args.grad_checkpointing", "false", *args]
    code = vl_main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "start from random weights" not in out.err  # both encoders came from files

    assert probe.state, "training never started"
    for key, expected in checks.items():
        assert key in probe.state, f"{key} not in the model: {sorted(probe.state)[:20]}"
        torch.testing.assert_close(probe.state[key], expected.reshape(probe.state[key].shape), rtol=0, atol=0,
                                   msg=f"{name}: {key} is not the file's tensor")
    if name == "violet_base":  # the MVM targets' DALL-E encoder is the pickled one
        dalle_state = made[2]
        loaded = {k.split(".encoder.", 1)[1]: v for k, v in probe.mvm_state.items()}
        assert loaded and set(loaded) <= set(dalle_state), sorted(loaded)[:5]
        for k, v in loaded.items():
            torch.testing.assert_close(v, dalle_state[k], rtol=0, atol=0, msg=k)
    assert len(probe.losses) == 1 and math.isfinite(probe.losses[0]), probe.losses
    assert (run / "runs" / name / "checkpoints" / "last.ckpt").is_file()
