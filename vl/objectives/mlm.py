"""Masked language modelling (MLM) conditioned on video: BERT's 15% masking with 80/10/10 replacement,
optionally whole-word, predicted from the fused text tokens by ``model.mlm_head``."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .interfaces import MaskedLanguageModel

IGNORE_INDEX = -100  # label of positions that are not predicted (PyTorch's cross-entropy default)


def word_starts(vocab: Sequence[str]) -> Tensor:
    """(V,) bool, True for WordPiece tokens that begin a word (those not starting with ``##``)."""
    return torch.tensor([not token.startswith("##") for token in vocab], dtype=torch.bool)


def mask_tokens(
    ids: Tensor,
    attention_mask: Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    prob: float = 0.15,
    whole_word_starts: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT masking: ids (B, L), attention_mask (B, L) -> (input_ids (B, L), labels (B, L)).

    Each real, non-special token is chosen with probability ``prob`` (with ``whole_word_starts`` (V,),
    each *word* is, and all its pieces with it). Chosen tokens become ``mask_token_id`` 80% of the time,
    a uniformly random token 10%, and stay as they are 10%. ``labels`` hold the original id where
    chosen and ``-100`` elsewhere. ``generator`` must live on ``ids``' device.

    Not transformers' ``DataCollatorForLanguageModeling``: it masks in the collate function with one
    generator per collator (seeded once, its state not part of a checkpoint), and its whole-word masking
    needs a fast tokenizer's offset mapping; here masking runs on the already tokenised batch on the
    model's device with the step's own generator, so a resumed run masks exactly as the uninterrupted one.
    """
    device = ids.device
    specials = torch.as_tensor(sorted(set(special_ids)), dtype=ids.dtype, device=device)
    candidates = attention_mask.bool() & ~torch.isin(ids, specials)  # (B, L)
    draw = torch.rand(ids.shape, generator=generator, device=device)  # (B, L)
    if whole_word_starts is not None:
        starts = whole_word_starts.to(device)[ids] | ~candidates  # (B, L): a new word begins here
        word = starts.long().cumsum(dim=1) - 1  # (B, L): index of the word each piece belongs to
        draw = draw.gather(1, word.clamp(min=0))  # every piece of a word shares one draw
    chosen = candidates & (draw < prob)
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)
    action = torch.rand(ids.shape, generator=generator, device=device)  # (B, L): 80/10/10 split
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=device, dtype=ids.dtype)
    input_ids = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_token_id), ids)
    input_ids = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, input_ids)
    return input_ids, labels


class MLMLoss(nn.Module):
    """``forward(model, video_tokens (B, N, Dv), text_ids (B, L), text_mask (B, L)) -> {"mlm_loss", "mlm_acc"}``.

    Masks the text (``mask_tokens``), re-encodes it, fuses it with the video tokens and predicts the
    original ids at the masked positions with ``model.mlm_head``. ``mlm_acc`` is the accuracy there.
    A batch with nothing masked gives a zero loss that still reaches every fused parameter.
    ``video_mask`` (B, N) True for tokens of real frames (``encode_video(...)["token_mask"]``): the fusion
    does not attend to a short clip's padded frames.
    """

    def __init__(self, mask_token_id: int | None, vocab_size: int, special_ids: Sequence[int],
                 prob: float = 0.15, whole_word_starts: Tensor | None = None) -> None:
        super().__init__()
        if mask_token_id is None:
            raise ValueError(
                "mlm: the text tokenizer has no mask token (open_clip's tokenizers have none); use a BERT-family "
                "text encoder and tokenizer (e.g. text={'name': 'bert', 'pretrained': 'minilm'}) or drop MLM"
            )
        if not 0.0 < prob < 1.0:
            raise ValueError(f"mlm: masking probability must be in (0, 1), got {prob}")
        self.mask_token_id, self.vocab_size, self.prob = int(mask_token_id), int(vocab_size), float(prob)
        self.special_ids = sorted({int(i) for i in special_ids})
        self.register_buffer("whole_word_starts", whole_word_starts, persistent=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, prob: float = 0.15, whole_word: bool = False) -> "MLMLoss":
        """Read the mask id, special ids, vocabulary size and word starts from a Hugging Face tokenizer."""
        mask_token_id = getattr(tokenizer, "mask_token_id", None)
        if mask_token_id is None:
            raise ValueError(f"mlm: tokenizer {type(tokenizer).__name__} has no mask token (open_clip's tokenizers "
                             f"have none); MLM needs a BERT-family tokenizer")
        size = len(tokenizer)
        starts = word_starts(tokenizer.convert_ids_to_tokens(list(range(size)))) if whole_word else None
        return cls(mask_token_id, size, tokenizer.all_special_ids, prob, starts)

    def forward(self, model: MaskedLanguageModel, video_tokens: Tensor, text_ids: Tensor, text_mask: Tensor,
                video_mask: Tensor | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if model.mlm_head is None:
            raise ValueError("mlm: the model was built without an MLM head; add 'mlm' to its heads")
        if self.vocab_size > model.mlm_head.decoder.out_features:
            raise ValueError(f"mlm: tokenizer vocabulary ({self.vocab_size}) is larger than the model's "
                             f"({model.mlm_head.decoder.out_features}); the text encoder must match the tokenizer")
        input_ids, labels = mask_tokens(
            text_ids, text_mask, mask_token_id=self.mask_token_id, vocab_size=self.vocab_size,
            special_ids=self.special_ids, prob=self.prob, whole_word_starts=self.whole_word_starts,
            generator=generator,
        )
        text = model.encode_text(input_ids, text_mask)
        fused = model.fuse(video_tokens, text["tokens"], text_mask, video_mask)["text_tokens"]  # (B, L, D)
        chosen = labels != IGNORE_INDEX  # (B, L)
        if not bool(chosen.any()):
            zero = fused.sum() * 0.0
            return {"mlm_loss": zero, "mlm_acc": zero.detach()}
        logits = model.mlm_head(fused[chosen])  # (M, V): only the masked positions
        target = labels[chosen]  # (M,)
        loss = F.cross_entropy(logits, target)
        acc = (logits.detach().argmax(dim=-1) == target).float().mean()
        return {"mlm_loss": loss, "mlm_acc": acc}
