"""`nn.TransformerEncoder` / `nn.TransformerDecoder` / `nn.Transformer`: traced through their
composed path; heads and feed-forward widths halve; the verification reference runs PyTorch's
own forward, fused fast path and nested tensors included."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import surgeon
from surgeon.layers.transformer import SlimTransformerEncoderLayer


def attentions(model: nn.Module) -> dict[str, int]:
    return {n: m.num_heads for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}


def ffn(model: nn.Module) -> dict[str, int]:
    return {n: m.out_features for n, m in model.named_modules() if n.endswith("linear1")}


def check(model: nn.Module, inputs: tuple[torch.Tensor, ...], **kw) -> tuple[nn.Module, surgeon.Report]:
    """Slim at 0.5: every attention loses half its heads, every feed-forward half its width."""
    model.eval()
    plan = surgeon.plan(model, 0.5, inputs, **kw)
    slim = plan.apply(model)
    with torch.no_grad():
        before, after = model(*inputs), slim(*inputs)
    assert after.shape == before.shape
    assert float((after - before).norm() / before.norm()) > 1e-3
    if not kw:
        assert attentions(slim) == {n: h - h // 2 for n, h in attentions(model).items()}
        assert ffn(slim) == {n: w // 2 for n, w in ffn(model).items()}
    report = surgeon.verify(model, slim, inputs, plan=plan)
    assert report.ok, report
    return slim, report


class Encoder(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, **kw), 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.enc(self.inp(x)))


@pytest.mark.parametrize("kw", [{"batch_first": True}, {"batch_first": False},
                                {"batch_first": True, "norm_first": True, "activation": "gelu"}])
def test_encoder_heads_and_feedforward_halve(kw):
    slim, _ = check(Encoder(**kw), (torch.randn(2, 5, 8),))
    assert all(type(layer) is SlimTransformerEncoderLayer for layer in slim.enc.layers)


class Text(nn.Module):
    """Padded token batches: PyTorch's encoder packs them into nested tensors in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32, padding_idx=0)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens):
        return self.head(self.enc(self.emb(tokens), src_key_padding_mask=tokens == 0).mean(1))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_padded_text_encoder_matches_the_nested_fast_path():
    tokens = torch.randint(1, 50, (3, 7))
    tokens[0, 5:] = tokens[1, 3:] = 0
    slim, _ = check(Text(), (tokens,))
    seen = []
    slim.enc.layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_nested))
    with torch.no_grad():
        slim(tokens)
    assert seen == [True]  # the slim layers were fed the encoder's nested tensors


class Seq2Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.src, self.tgt = nn.Linear(8, 32), nn.Linear(8, 32)
        self.t = nn.Transformer(32, 4, 2, 2, 64, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, a, b):
        mask = nn.Transformer.generate_square_subsequent_mask(b.shape[1])
        return self.head(self.t(self.src(a), self.tgt(b), tgt_mask=mask, tgt_is_causal=True))


SEQ = (torch.randn(2, 6, 8), torch.randn(2, 4, 8))


def test_transformer_self_and_cross_attention_halve():
    slim, report = check(Seq2Seq(), SEQ)
    assert len(report.checked) == 10  # 2 encoder + 2 × 2 decoder attentions, 4 feed-forwards


def test_transformer_embedding_dim_on_request():
    slim, report = check(Seq2Seq(), SEQ, prune_embed=True)
    assert slim.t.d_model == 16 and slim.src.out_features == slim.tgt.out_features == 16
    assert any("LayerNorm" in why for _, why in report.unchecked)
