"""`nn.Transformer*` layers, as traced and as run once their attention narrows.

`nn.TransformerEncoderLayer` and `nn.TransformerEncoder` pick a fused fast path (one kernel
per layer, nested tensors for padded batches) from runtime checks that fx cannot trace, and
that kernel assumes `num_heads · head_dim == d_model`. fx follows the composed path they fall
back to otherwise (`_sa_block`, `_ff_block`); a layer whose heads left runs it too, as
`SlimTransformerEncoderLayer` (which also accepts the encoder's nested tensors, so the
encoder keeps its own forward and its padded positions stay as PyTorch makes them).
`TRACED_FORWARD` gives the forward fx follows for each class (the decoder side has no fast
path; causal-mask detection and `nn.Transformer`'s shape checks decide nothing for a graph).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["SlimTransformerEncoderLayer", "TRACED_FORWARD"]


class SlimTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """Encoder layer that always takes the composed path (its attention may be narrower)."""

    def forward(self, src: Tensor, src_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if not src.is_nested:
            return self.composed(src, src_mask, src_key_padding_mask, is_causal)
        # the encoder's fast path packs a padded batch into a nested tensor: unpack, run, repack
        lengths = torch.tensor([t.shape[0] for t in src.unbind()], device=src.device)
        padded = src.to_padded_tensor(0.0)
        keep = torch.arange(padded.shape[1], device=src.device) < lengths[:, None]
        out = self.composed(padded, src_mask, ~keep, is_causal)
        return torch._nested_tensor_from_mask(out, keep, mask_check=False)

    def composed(self, src: Tensor, src_mask: Tensor | None = None,
                 src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """`nn.TransformerEncoderLayer`'s own path when it skips the fused kernel."""
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


def _encoder(m: nn.TransformerEncoder, src: Tensor, mask: Tensor | None = None,
             src_key_padding_mask: Tensor | None = None, is_causal: bool | None = None) -> Tensor:
    out = src
    for layer in m.layers:
        out = layer(out, src_mask=mask, is_causal=bool(is_causal), src_key_padding_mask=src_key_padding_mask)
    return out if m.norm is None else m.norm(out)


def _decoder(m: nn.TransformerDecoder, tgt: Tensor, memory: Tensor, tgt_mask: Tensor | None = None,
             memory_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
             memory_key_padding_mask: Tensor | None = None, tgt_is_causal: bool | None = None,
             memory_is_causal: bool = False) -> Tensor:
    out = tgt
    for layer in m.layers:
        out = layer(out, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                    tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                    tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
    return out if m.norm is None else m.norm(out)


def _transformer(m: nn.Transformer, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None,
                 tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
                 src_key_padding_mask: Tensor | None = None, tgt_key_padding_mask: Tensor | None = None,
                 memory_key_padding_mask: Tensor | None = None, src_is_causal: bool | None = None,
                 tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Tensor:
    memory = m.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
    return m.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                     tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                     tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)


TRACED_FORWARD: dict[type, Callable[..., Tensor]] = {
    nn.TransformerEncoderLayer: SlimTransformerEncoderLayer.composed,
    SlimTransformerEncoderLayer: SlimTransformerEncoderLayer.composed,
    nn.TransformerEncoder: _encoder,
    nn.TransformerDecoderLayer: nn.TransformerDecoderLayer.forward,
    nn.TransformerDecoder: _decoder,
    nn.Transformer: _transformer,
}
