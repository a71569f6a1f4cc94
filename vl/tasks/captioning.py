"""Video captioning (MSRVTT, MSVD, YouCook2): the fusion transformer as a causal decoder on the video tokens.

As SwinBERT does, caption tokens enter the fusion as word embeddings (the text encoder's table, tied
to the LM head) plus learned positions, with a causal mask: token i sees the video and caption tokens
0..i (``VideoLanguageModel.fuse(..., causal=True)``). Training is next-token cross-entropy on one of
the clip's captions (``[CLS]`` starts a caption, ``[SEP]`` ends it). Evaluation generates a caption
per clip by greedy decoding (``beam_size=1``) or beam search, at most ``max_len`` tokens, and scores it
against every reference with BLEU-4, METEOR, ROUGE-L and CIDEr (``vl.evaluation.captioning.caption_metrics``;
METEOR is reported unavailable where Java is missing).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from datapipes.batch import Batch
from vl.evaluation.captioning import caption_metrics
from vl.evaluation.retrieval import NonFiniteError, nonfinite_message
from vl.lit.module import VTC_PARAMETERS, BackboneConfig, VLModule, require_finite_outputs
from vl.lit.optim import OptimConfig
from vl.models import VideoLanguageModel
from vl.models.hub import load_tokenizer

StepFn = Callable[[Tensor], Tensor]  # prefixes (M, t) long -> log-probs of the next token (M, V)


class CaptionEmbedding(nn.Module):
    """Decoder inputs: ids (B, t) -> word embeddings (the text encoder's table, passed in) + learned
    positions, LayerNorm, dropout, projected to the text width the fusion expects -> (B, t, text_dim)."""

    def __init__(self, word_dim: int, text_dim: int, max_len: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(max_len, word_dim))
        trunc_normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(word_dim)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Identity() if word_dim == text_dim else nn.Linear(word_dim, text_dim)

    def forward(self, words: nn.Embedding, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        if t > self.pos.shape[0]:
            raise ValueError(f"caption prefix of {t} tokens is longer than max_len {self.pos.shape[0]}")
        x = words(ids) + self.pos[:t]  # (B, t, word_dim)
        return self.proj(self.drop(self.norm(x)))  # (B, t, text_dim)


# ---------------------------------------------------------------- decoding


def strip_eos(tokens: list[int], eos: int) -> list[int]:
    """Tokens up to (without) the first ``eos``."""
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def greedy_decode(step: StepFn, batch_size: int, bos: int, eos: int, max_len: int,
                  device: torch.device | str = "cpu") -> list[list[int]]:
    """The most likely next token at every step, at most ``max_len`` tokens -> token ids per row (no BOS/EOS)."""
    seq = torch.full((batch_size, 1), bos, dtype=torch.long, device=device)  # (B, 1)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_len):
        token = step(seq).argmax(dim=-1).masked_fill(done, eos)  # (B,)
        seq = torch.cat([seq, token[:, None]], dim=1)  # (B, t + 1)
        done |= token == eos
        if bool(done.all()):
            break
    return [strip_eos(row, eos) for row in seq[:, 1:].tolist()]


def _collect_finished(finished: list[list[tuple[float, list[int]]]], top: Tensor, beam: Tensor, is_eos: Tensor,
                      seq: Tensor, length: int, length_penalty: float) -> None:
    """Add the candidates that end now (EOS among the best K of a row) to their row's finished hypotheses;
    top, beam, is_eos (B, 2K); seq (B, K, t). Scores are normalised by length ** length_penalty."""
    K = seq.shape[1]
    for b, j in is_eos[:, :K].nonzero().tolist():
        if len(finished[b]) < K and bool(torch.isfinite(top[b, j])):
            tokens = seq[b, int(beam[b, j]), 1:].tolist()
            finished[b].append((float(top[b, j]) / length**length_penalty, tokens))


def beam_search(step: StepFn, batch_size: int, beam_size: int, bos: int, eos: int, max_len: int,
                length_penalty: float = 1.0, device: torch.device | str = "cpu") -> list[list[int]]:
    """Beam search: rows of ``step``'s input are (batch b, beam k) at b * K + k. Keeps the K best unfinished
    prefixes, collects hypotheses that end with EOS, stops a row when K have ended (or at ``max_len``
    tokens) and returns the best by log-prob / length ** ``length_penalty``, token ids without BOS/EOS."""
    B, K = batch_size, beam_size
    seq = torch.full((B * K, 1), bos, dtype=torch.long, device=device)  # (B*K, 1)
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand beam 0 only
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for length in range(1, max_len + 1):
        logp = step(seq).float()  # (B*K, V)
        V = logp.shape[-1]
        if V < 2 * K:
            raise ValueError(f"beam search needs a vocabulary of at least 2 * beam_size tokens, got {V}")
        top, idx = (scores.view(-1, 1) + logp).view(B, K * V).topk(2 * K, dim=1)  # (B, 2K)
        beam, token = idx // V, idx % V
        is_eos = token == eos
        _collect_finished(finished, top, beam, is_eos, seq.view(B, K, -1), length, length_penalty)
        # At most K candidates end (one EOS per beam), so every row has at least K that go on.
        going = ~is_eos
        keep = going & (going.long().cumsum(dim=1) <= K)  # (B, 2K), exactly K True per row, best first
        sel = keep.nonzero()[:, 1].view(B, K)
        scores, beam, token = top.gather(1, sel), beam.gather(1, sel), token.gather(1, sel)  # (B, K) each
        rows = (torch.arange(B, device=device)[:, None] * K + beam).flatten()  # (B*K,) parent prefixes
        seq = torch.cat([seq[rows], token.flatten()[:, None]], dim=1)  # (B*K, t + 1)
        if all(len(f) >= K for f in finished):
            break
    alive = seq.view(B, K, -1)
    for b in range(B):
        if len(finished[b]) < K:  # ran out of length: unfinished prefixes compete too
            finished[b] += [(float(scores[b, k]) / (alive.shape[2] - 1) ** length_penalty, alive[b, k, 1:].tolist())
                            for k in range(K) if torch.isfinite(scores[b, k])]
    # a row with no finite hypothesis (non-finite logits, which the caller reports) gets an empty caption
    return [strip_eos(max(f, key=lambda h: h[0])[1], eos) if f else [] for f in finished]


def special_ids(tokenizer: Any) -> tuple[int, int, list[int]]:
    """(bos, eos, ids never generated) of a Hugging Face tokenizer: [CLS]/[SEP] for BERT, <s>/</s> otherwise."""
    bos = getattr(tokenizer, "cls_token_id", None)
    eos = getattr(tokenizer, "sep_token_id", None)
    if bos is None or eos is None:
        bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if bos is None or eos is None or not hasattr(tokenizer, "decode"):
        raise ValueError(f"captioning needs a tokenizer with begin/end tokens and decode(); "
                         f"{type(tokenizer).__name__} lacks them (use a BERT-family tokenizer, e.g. minilm)")
    never = [i for i in (bos, tokenizer.pad_token_id, getattr(tokenizer, "mask_token_id", None)) if i is not None]
    return int(bos), int(eos), never


# ---------------------------------------------------------------- LightningModule


class CaptioningModule(VLModule):
    """Captioning with the fusion as a causal decoder; LM head = the model's MLM head (tied to the words).

    Args (besides ``BackboneConfig``'s, given by keyword: ``model``, ``video``, ..., ``init_from``):
        tokenizer: the data's tokenizer (``minilm`` or a local directory): begin/end ids and decoding.
        max_len: the most tokens a generated caption has (its end token included); also the longest
            caption prefix trained on (longer training captions are cut).
        beam_size: 1 decodes greedily; more runs beam search (an evaluation option).
        length_penalty: beam hypotheses are ranked by log-prob / length ** length_penalty (an evaluation option).
        label_smoothing: of the next-token cross-entropy.
        embed_dropout: dropout on the decoder's input embeddings.
        optim: AdamW + warmup/cosine settings.
        max_consecutive_nonfinite: stop after this many steps in a row with a NaN/inf loss.
    """

    def __init__(
        self,
        tokenizer: str = "minilm",
        max_len: int = 20,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        label_smoothing: float = 0.0,
        embed_dropout: float = 0.1,
        optim: OptimConfig = OptimConfig(),
        max_consecutive_nonfinite: int = 5,
        **backbone: Any,
    ) -> None:
        if max_len < 1 or beam_size < 1:
            raise ValueError(f"max_len and beam_size must be >= 1, got {max_len} and {beam_size}")
        super().__init__(
            BackboneConfig(**backbone), heads=("mlm",), frozen=VTC_PARAMETERS, optim=optim,
            max_consecutive_nonfinite=max_consecutive_nonfinite,
            options=dict(tokenizer=tokenizer, max_len=max_len, label_smoothing=label_smoothing,
                         embed_dropout=embed_dropout),
            evaluation=dict(beam_size=beam_size, length_penalty=length_penalty),
        )
        self.tokenizer = load_tokenizer(tokenizer)
        self.bos, self.eos, self.never = special_ids(self.tokenizer)
        if len(self.tokenizer) > self.model.mlm_head.decoder.out_features:
            raise ValueError(f"tokenizer {tokenizer!r} has {len(self.tokenizer)} tokens, more than the model's "
                             f"vocabulary ({self.model.mlm_head.decoder.out_features})")
        words = self.model.text_encoder.word_embeddings
        self.embed = CaptionEmbedding(words.embedding_dim, self.model.text_encoder.embed_dim, max_len, embed_dropout)

    def unused_parameters(self, model: VideoLanguageModel) -> set[str]:
        """The VTC parts and the text encoder's layers: captions enter the fusion as word embeddings only."""
        words = model.text_encoder.word_embeddings.weight
        text = {n for n, p in model.named_parameters() if n.startswith("text_encoder.") and p is not words}
        return super().unused_parameters(model) | text

    # ---- decoder ----------------------------------------------------------------------------------

    def decode(self, video_tokens: Tensor, ids: Tensor, mask: Tensor, video_mask: Optional[Tensor] = None) -> Tensor:
        """Causal fusion of caption prefixes: video_tokens (B, N, Dv), ids/mask (B, t) -> fused tokens (B, t, D).
        ``video_mask`` (B, N) True for tokens of real frames (None: all): padded frames are not attended."""
        text = self.embed(self.model.text_encoder.word_embeddings, ids)  # (B, t, Dt)
        return self.model.fuse(video_tokens, text, mask, video_mask, causal=True)["text_tokens"]

    def decode_logits(self, video_tokens: Tensor, ids: Tensor, mask: Tensor,
                      video_mask: Optional[Tensor] = None) -> Tensor:
        """Teacher-forced next-token logits: video_tokens (B, N, Dv), caption prefix ids/mask (B, t), video_mask
        (B, N) | None -> (B, t, V)."""
        return self.model.mlm_head(self.decode(video_tokens, ids, mask, video_mask))

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Next-token cross-entropy over each caption's real tokens (its end token included)."""
        longest = int(batch.text_mask.sum(dim=1).max())
        t = min(longest - 1, self.hparams.max_len)  # prefix length
        ids, mask = batch.text_ids[:, : t + 1], batch.text_mask[:, : t + 1]  # (B, t + 1)
        real = mask[:, 1:].bool()  # (B, t): positions whose next token is a real one
        video = self.model.encode_video(batch.video, frame_mask=batch.frame_mask)  # tokens (B, N, Dv)
        fused = self.decode(video["tokens"], ids[:, :-1], mask[:, :-1], video.get("token_mask"))  # (B, t, D)
        logits = self.model.mlm_head(fused[real])  # (M, V): the vocabulary only where there is a target
        target = ids[:, 1:][real]  # (M,)
        loss = F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)
        acc = (logits.detach().argmax(dim=-1) == target).float().mean()
        return {"caption_loss": loss, "caption_token_acc": acc}

    def generate(self, video: Tensor, beam_size: Optional[int] = None, frame_mask: Optional[Tensor] = None
                 ) -> list[str]:
        """Captions of clips (B, T, C, H, W): greedy for beam size 1, else beam search; at most ``max_len`` tokens.
        ``frame_mask`` (B, T) False marks padded frames of short clips (``Batch.frame_mask``): they are ignored."""
        ids = self.generate_ids(video, beam_size, frame_mask)
        return [self.tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]

    def generate_ids(self, video: Tensor, beam_size: Optional[int] = None,
                     frame_mask: Optional[Tensor] = None) -> list[list[int]]:
        """Token ids (no begin/end token) of the captions of clips (B, T, C, H, W), at most ``max_len`` each.

        Raises ``vl.evaluation.retrieval.NonFiniteError`` when the decoder's logits of a clip held a NaN or infinity (a
        model with non-finite weights): its argmax would be an arbitrary caption."""
        ids, finite = self.generate_ids_checked(video, beam_size, frame_mask)
        if not all(finite):
            raise NonFiniteError(nonfinite_message("caption logits", finite.count(False), len(finite), "clips"))
        return ids

    @torch.no_grad()
    def generate_ids_checked(self, video: Tensor, beam_size: Optional[int] = None,
                             frame_mask: Optional[Tensor] = None) -> tuple[list[list[int]], list[bool]]:
        """``generate_ids`` without raising: the token ids and, per clip, whether every logit the decoder gave
        it was finite (evaluation raises only after gathering these from every rank)."""
        beam = beam_size or self.beam_size
        encoded = self.model.encode_video(video, frame_mask=frame_mask)
        tokens, keep = encoded["tokens"], encoded.get("token_mask")  # (B, N, Dv), (B, N) | None
        rows = tokens.repeat_interleave(beam, dim=0) if beam > 1 else tokens  # (B*K, N, Dv)
        row_mask = keep.repeat_interleave(beam, dim=0) if keep is not None and beam > 1 else keep  # (B*K, N) | None
        finite = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)  # (B*K,)

        def step(seq: Tensor) -> Tensor:  # (M, t) -> (M, V)
            logits = self.decode_logits(rows, seq, torch.ones_like(seq), row_mask)[:, -1].float()
            finite.logical_and_(torch.isfinite(logits).all(dim=-1))
            logits[:, self.never] = float("-inf")
            return logits.log_softmax(dim=-1)

        B, h = video.shape[0], self.hparams
        if beam == 1:
            ids = greedy_decode(step, B, self.bos, self.eos, h.max_len, self.device)
        else:
            ids = beam_search(step, B, beam, self.bos, self.eos, h.max_len, self.length_penalty, self.device)
        return ids, finite.view(B, beam).all(dim=1).tolist()

    # ---- evaluation -------------------------------------------------------------------------------

    def eval_step(self, batch: Batch, split: str) -> None:
        ids, finite = self.generate_ids_checked(batch.video, frame_mask=batch.frame_mask)
        captions = [self.tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
        references = batch.references or [[] for _ in captions]
        for key, caption, refs, ok in zip(batch.keys, captions, references, finite):
            self.eval_outputs.append({"key": key, "prediction": caption, "references": list(refs), "finite": ok})

    def predict(self, batch: Batch) -> dict[str, list[dict]]:
        """``vl predict``: the generated caption of each clip."""
        captions = self.generate(batch.video, frame_mask=batch.frame_mask)
        return {"rows": [{"key": key, "caption": caption} for key, caption in zip(batch.keys, captions)]}

    def finish_eval(self, split: str) -> None:
        outputs = self.take_outputs()
        if not outputs:
            return
        require_finite_outputs(split, outputs, "caption logits")
        if not all(o["references"] for o in outputs):
            raise ValueError("captioning evaluation needs reference captions for every clip (text_field: caption)")
        predictions = {o["key"]: o["prediction"] for o in outputs}
        references = {o["key"]: o["references"] for o in outputs}
        metrics: dict[str, Any] = caption_metrics(predictions, references)
        metrics["num_videos"] = float(len(outputs))
        h = self.hparams
        decoding = "greedy" if self.beam_size == 1 else f"beam {self.beam_size}"
        meteor = "unavailable (no Java)" if metrics["METEOR"] is None else f"{metrics['METEOR']:.2f}"
        summary = (f"{split}: captioning of {len(outputs)} clips ({decoding}, at most {h.max_len} tokens)\n"
                   f"  BLEU-4 {metrics['BLEU-4']:.2f}  METEOR {meteor}  ROUGE-L {metrics['ROUGE-L']:.2f}"
                   f"  CIDEr {metrics['CIDEr']:.2f}")
        self.report(split, metrics, outputs, summary)
