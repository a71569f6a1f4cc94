"""What each objective needs of a model, as ``typing.Protocol``s: VTM, MLM and MVM are called with the model,
but they use only the parts named here, so any module that has them trains with the objective (a new model
family implements these, not the whole ``VideoLanguageModel``). VTC and the time-reversal loss take
embeddings only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

from torch import Tensor, nn

if TYPE_CHECKING:
    from vl.models.layers import VideoEncoder


class Fuses(Protocol):
    """A fusion of video tokens (B, N, Dv) and text tokens (B, L, Dt): ``cls`` (B, D), ``text_tokens``
    (B, L, D), ``video_tokens`` (B, N, D) where the fusion keeps them, ``attentions`` on request."""

    def fuse(self, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor, video_mask: Optional[Tensor] = None,
             return_attention: bool = False, causal: bool = False) -> dict[str, Tensor]: ...


class MatchingModel(Fuses, Protocol):
    """VTM: the fused ``cls`` token classified by ``vtm_head`` (None: the model has no VTM head)."""

    vtm_head: Optional[nn.Module]


class MaskedLanguageModel(Fuses, Protocol):
    """MLM: masked captions re-encoded by ``encode_text`` (-> ``tokens`` (B, L, Dt)), fused with the video
    tokens and predicted by ``mlm_head`` (None: no MLM head)."""

    mlm_head: Optional[nn.Module]

    def encode_text(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]: ...


class MaskedVideoModel(Fuses, Protocol):
    """MVM: the ``video_encoder`` run on a masked clip (``forward_features``, ``token_keep``,
    ``drops_masked_tokens``, ``num_prefix_tokens``), ``embed_video`` for text-guided masking, and
    ``fusion`` (its width ``dim``) when the targets are predicted from fused tokens."""

    video_encoder: "VideoEncoder"
    fusion: nn.Module

    def embed_video(self, pooled: Tensor) -> Tensor: ...
