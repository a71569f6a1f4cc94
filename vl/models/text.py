"""Text encoders: a Hugging Face BERT-family encoder, or open_clip's text tower.

Both keep one contract: ``forward(ids (B, L), mask (B, L)) -> tokens (B, L, D)``, ``pool(tokens, mask)
-> (B, D)`` (the CLS token, or the last real token: CLIP's end-of-text), and the attributes
``embed_dim``, ``vocab_size``, ``word_embeddings`` (tied to the MLM decoder where the widths match) and
``is_pretrained``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Literal

import torch
from open_clip.transformer import QuickGELU, TextTransformer
from torch import Tensor, nn

from .hub import load_open_clip_weights, resolve_pretrained
from .registry import TEXT_ENCODERS, build

Pooling = Literal["cls", "eot", "mean"]  # which tokens ``pool`` summarises a text by
POOLINGS: tuple[str, ...] = ("cls", "eot", "mean")


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of ``POOLINGS``; ValueError naming the choices otherwise."""
    if pooling not in POOLINGS:
        raise ValueError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


class TextEncoder(nn.Module):
    """Shared pooling, weight-decay and pretrained-name logic of the text encoders."""

    embed_dim: int
    vocab_size: int
    is_pretrained: bool = False
    pooling: Pooling = "cls"

    @property
    def word_embeddings(self) -> nn.Embedding | None:
        """The input token embedding table (B, L) -> (B, L, width), or None."""
        return None

    def pool(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, L, D), mask (B, L) -> (B, D): the first token (``cls``), the last real one (``eot``) or
        the mean of the real tokens (``mean``, as sentence-transformers pool MiniLM)."""
        if self.pooling == "cls":
            return tokens[:, 0]
        if self.pooling == "mean":
            weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
            return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        last = mask.long().sum(dim=1).clamp(min=1) - 1  # (B,)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) to exclude from weight decay."""
        return set()

    def pretrained_parameter_names(self) -> set[str]:
        """Names of the parameters loaded from pretrained weights (all of them, or none)."""
        return {n for n, _ in self.named_parameters()} if self.is_pretrained else set()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (truncating layers is intended here)."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


class HFTextEncoder(TextEncoder):
    """A Hugging Face encoder (BERT family): ids (B, L), mask (B, L) -> tokens (B, L, hidden_size).

    ``pretrained``: a local directory, a packaged alias (``minilm``) or a hub id already in the local
    cache; the architecture is read from it, and only ``num_layers`` may be given too (keep the first
    N layers, as ALBEF splits BERT between text encoder and fusion). Without ``pretrained``, a
    ``BertConfig`` is built from the size options (defaults: BERT-base with the uncased WordPiece vocab).
    """

    SIZE_OPTIONS = ("hidden_size", "num_heads", "intermediate_size", "vocab_size", "max_position_embeddings")

    def __init__(
        self,
        pretrained: str | os.PathLike | None = None,
        hidden_size: int | None = None,  # 768
        num_layers: int | None = None,  # 12
        num_heads: int | None = None,  # 12
        intermediate_size: int | None = None,  # 4 * hidden_size
        vocab_size: int | None = None,  # 30522: BERT/MiniLM uncased WordPiece
        max_position_embeddings: int | None = None,  # 512
        dropout: float = 0.1,
        pooling: Pooling = "cls",
    ) -> None:
        super().__init__()
        sizes = dict(hidden_size=hidden_size, num_heads=num_heads, intermediate_size=intermediate_size,
                     vocab_size=vocab_size, max_position_embeddings=max_position_embeddings)
        self.pooling = check_pooling(pooling)
        self.is_pretrained = pretrained is not None
        if pretrained is not None:
            given = [k for k, v in sizes.items() if v is not None]
            if given:
                raise ValueError(
                    f"text: {given} are read from the pretrained weights {str(pretrained)!r}; drop them (only "
                    f"num_layers may truncate a pretrained model), e.g. text={{'name': 'bert', 'pretrained': ...}}"
                )
            self.model = self._load(str(pretrained), num_layers, dropout)
        else:
            self.model = self._from_config(num_layers=num_layers, dropout=dropout, **sizes)
        self.embed_dim = int(self.model.config.hidden_size)
        self.vocab_size = int(self.model.config.vocab_size)

    @staticmethod
    def _load(pretrained: str, num_layers: int | None, dropout: float) -> nn.Module:
        """AutoModel from local files only, without its (unused) pooler."""
        from transformers import AutoModel

        extra = {} if num_layers is None else {"num_hidden_layers": num_layers}
        with _quiet_transformers():
            model = AutoModel.from_pretrained(
                resolve_pretrained(pretrained), local_files_only=True, hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout, **extra,
            )
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # pooling is ours (CLS/EOT); its dense layer would get no gradient
        return model.train()  # from_pretrained returns eval mode; the module's owner decides

    @staticmethod
    def _from_config(hidden_size: int | None, num_layers: int | None, num_heads: int | None,
                     intermediate_size: int | None, vocab_size: int | None,
                     max_position_embeddings: int | None, dropout: float) -> nn.Module:
        """A randomly initialised BERT of the given size."""
        from transformers import BertConfig, BertModel

        hidden = hidden_size or 768
        config = BertConfig(
            vocab_size=vocab_size or 30522, hidden_size=hidden, num_hidden_layers=num_layers or 12,
            num_attention_heads=num_heads or 12, intermediate_size=intermediate_size or 4 * hidden,
            max_position_embeddings=max_position_embeddings or 512, hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        return BertModel(config, add_pooling_layer=False)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute layer activations in backward to save memory."""
        self.model.config.use_cache = False  # an encoder caches nothing; silences transformers' warning
        # transformers v5 names it activation checkpointing; v4 only has the gradient_checkpointing_* names.
        on = getattr(self.model, "activation_checkpointing_enable", None) or self.model.gradient_checkpointing_enable
        off = getattr(self.model, "activation_checkpointing_disable", None) or self.model.gradient_checkpointing_disable
        if enable:
            on({"use_reentrant": False})
        else:
            off()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L), mask (B, L) 1 = real token -> tokens (B, L, D)."""
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


class ClipTextEncoder(TextEncoder):
    """open_clip's causal text tower: ids (B, L), mask (B, L) -> tokens (B, L, output_dim).

    Every token is mapped into CLIP's joint space with the tower's ``ln_final`` and
    ``text_projection``; ``pool`` takes the last real token (the end-of-text token of open_clip's
    tokenizer). ``pretrained``: a local open_clip checkpoint file whose text tower sits at the top level.
    """

    def __init__(
        self,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
        mlp_ratio: float = 4.0,
        output_dim: int = 512,
        quick_gelu: bool = False,  # True for OpenAI's original weights
        pooling: Pooling = "eot",
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.tower = TextTransformer(
            context_length=context_length, vocab_size=vocab_size, width=width, heads=heads, layers=layers,
            mlp_ratio=mlp_ratio, output_dim=output_dim, act_layer=QuickGELU if quick_gelu else nn.GELU,
        )
        self.embed_dim, self.vocab_size, self.pooling = output_dim, vocab_size, check_pooling(pooling)
        self.context_length = context_length
        self.is_pretrained = pretrained is not None
        if pretrained is not None:
            load_open_clip_weights(self.tower, pretrained, prefix="")

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.tower.token_embedding

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.tower.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {f"tower.{n}" for n in self.tower.no_weight_decay()}

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L), mask (B, L) -> tokens (B, L, output_dim); causal, so padding never reaches real tokens."""
        L = ids.shape[1]
        if L > self.context_length:
            raise ValueError(f"clip text: {L} tokens exceed context_length {self.context_length}")
        t = self.tower
        x = t.token_embedding(ids) + t.positional_embedding[:L]  # (B, L, width)
        causal = None if t.attn_mask is None else t.attn_mask[:L, :L].to(x.dtype)
        x = t.ln_final(t.transformer(x, attn_mask=causal))
        return x @ t.text_projection  # (B, L, output_dim)


@TEXT_ENCODERS.register(HFTextEncoder)
def bert(**kw) -> HFTextEncoder:
    """Any BERT-family encoder: ``pretrained`` (local dir / alias) or sizes (default BERT-base)."""
    return build(HFTextEncoder, {}, kw)


@TEXT_ENCODERS.register(HFTextEncoder)
def bert_tiny(**kw) -> HFTextEncoder:
    """BERT-tiny dims (128 wide, 2 layers, 2 heads) on the uncased WordPiece vocab, random init, pooled by the
    mean of its tokens: a randomly initialised BERT's CLS output is nearly the same for every caption."""
    return build(HFTextEncoder, dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512,
                                     pooling="mean"), kw)


@TEXT_ENCODERS.register(HFTextEncoder)
def bert_base(**kw) -> HFTextEncoder:
    """BERT-base dims (768 wide, 12 layers, 12 heads), random init; pass ``bert`` + ``pretrained`` for weights."""
    return build(HFTextEncoder, dict(hidden_size=768, num_layers=12, num_heads=12), kw)


@TEXT_ENCODERS.register(HFTextEncoder)
def bert_large(**kw) -> HFTextEncoder:
    """BERT-large dims (1024 wide, 24 layers, 16 heads), random init."""
    return build(HFTextEncoder, dict(hidden_size=1024, num_layers=24, num_heads=16), kw)


@TEXT_ENCODERS.register(HFTextEncoder)
def minilm(**kw) -> HFTextEncoder:
    """The packaged pretrained MiniLM-L6 (384 wide, 6 layers), usable offline (DESIGN §7)."""
    return build(HFTextEncoder, dict(pretrained="minilm"), kw)


@TEXT_ENCODERS.register(ClipTextEncoder)
def clip_text_tiny(**kw) -> ClipTextEncoder:
    """Debug size: 128 wide, 2 layers, 2 heads, 128-d output."""
    return build(ClipTextEncoder, dict(width=128, heads=2, layers=2, output_dim=128), kw)


@TEXT_ENCODERS.register(ClipTextEncoder)
def clip_text_base(**kw) -> ClipTextEncoder:
    """The text tower of open_clip ViT-B/16: 512 wide, 12 layers, 8 heads, 512-d output."""
    return build(ClipTextEncoder, dict(width=512, heads=8, layers=12, output_dim=512), kw)


@TEXT_ENCODERS.register(ClipTextEncoder)
def clip_text_large(**kw) -> ClipTextEncoder:
    """The text tower of open_clip ViT-L/14: 768 wide, 12 layers, 12 heads, 768-d output."""
    return build(ClipTextEncoder, dict(width=768, heads=12, layers=12, output_dim=768), kw)
