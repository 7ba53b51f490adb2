"""Hugging Face transformers through the torch.export frontend: heads and MLPs halve in encoders,
decoders with grouped-query attention, fused q/k/v; generate, save and reload stay exact."""
from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T
from torch import nn

import surgeon
from surgeon.ops.hf import head_counts

IDS = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
PAD_RIGHT = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
PAD_LEFT = torch.tensor([[1] * 7, [0] * 2 + [1] * 5])

ENCODERS = {
    "bert": lambda: (T.BertForSequenceClassification(T.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)), "text"),
    "roberta": lambda: (T.RobertaForMaskedLM(T.RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        pad_token_id=1)), "text"),
    "distilbert": lambda: (T.DistilBertForSequenceClassification(T.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64)), "text"),
    "vit": lambda: (T.ViTForImageClassification(T.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=8)), "image"),
}
DECODERS = {
    "llama-gqa": lambda: T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, head_dim=8)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2)),
    "qwen3-qk-norm": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, head_dim=8)),
    "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16)),
    "phi3-fused-qkv": lambda: T.Phi3ForCausalLM(T.Phi3Config(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, pad_token_id=0)),
    "gpt2-conv1d": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4)),
    "gpt-neox-interleaved": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8)),
    "opt": lambda: T.OPTForCausalLM(T.OPTConfig(
        vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=32)),
    "phi": lambda: T.PhiForCausalLM(T.PhiConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8)),
}
# configs that state the head width (head_dim) and uniform widths: save_pretrained describes the slim model
SAVE_PRETRAINED = {"vit", "llama-gqa", "mistral", "qwen2", "qwen3-qk-norm", "gemma", "phi3-fused-qkv", "phi"}


def liven(model: nn.Module) -> nn.Module:
    """Weights large enough that every head and MLP unit visibly moves the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def inputs(kind: str) -> dict:
    if kind == "image":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))}
    return {"input_ids": IDS, "attention_mask": PAD_RIGHT if kind == "text" else PAD_LEFT}


def logits(model: nn.Module, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


def mlp_widths(model: nn.Module) -> list[int]:
    names = ("intermediate.dense", "mlp.gate_proj", "mlp.fc1", "mlp.c_fc", "mlp.dense_h_to_4h", "ffn.lin1",
             "fc1", "mlp.gate_up_proj")
    return [m.weight.shape[0] if isinstance(m, nn.Linear) else m.weight.shape[1]
            for n, m in model.named_modules() if n.endswith(names) and hasattr(m, "weight")]


def slim_and_check(model: nn.Module, x: dict, **options) -> nn.Module:
    """The one generic call: same class and output shape, heads and MLP halved in every layer,
    every pruned group checked and exact, the output moved (the check is not vacuous)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # config warnings are tested on their own below
        slim = surgeon.slim(model, 0.5, x, **options)
    assert type(slim) is type(model)
    before, after = logits(model, x), logits(slim, x)
    assert after.shape == before.shape
    assert float((after - before).norm() / before.norm()) > 1e-3
    report = surgeon.verify(model, slim)
    assert report.ok and report.checked and not report.unchecked, report
    old = [head_counts(m) for m in model.modules() if head_counts(m)]
    new = [head_counts(m) for m in slim.modules() if head_counts(m)]
    assert old and all(n[0] == o[0] // 2 for o, n in zip(old, new)), (old, new)
    assert all(n == o // 2 for o, n in zip(mlp_widths(model), mlp_widths(slim)))
    return slim


@pytest.mark.parametrize("name", ENCODERS)
def test_encoders_lose_half_their_heads_and_mlp(name):
    model, kind = ENCODERS[name]()
    slim = slim_and_check(liven(model), inputs(kind))
    emb = next(m for m in slim.modules() if isinstance(m, (nn.Embedding, nn.Conv2d)))
    assert emb.weight.shape == next(m for m in model.modules() if type(m) is type(emb)).weight.shape


@pytest.mark.parametrize("name", DECODERS)
def test_decoders_halve_and_generate_with_the_cache(name):
    model = liven(DECODERS[name]())
    slim = slim_and_check(model, inputs("decoder"))
    prompt = IDS[:1]
    slim.generation_config.eos_token_id = None  # six tokens, whatever they are
    cached = slim.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    seq = prompt
    for _ in range(6):  # greedy decoding without a cache: the slim forward's argmax tokens
        with torch.no_grad():
            nxt = slim(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(cached, seq)


@pytest.mark.parametrize("name", sorted(SAVE_PRETRAINED & set(DECODERS)) + ["vit"])
def test_save_pretrained_round_trip_where_the_config_describes_the_slim_model(name, tmp_path):
    model, kind = (liven(DECODERS[name]()), "decoder") if name in DECODERS else (liven(ENCODERS[name]()[0]), "image")
    x = inputs(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "config cannot describe" warning
        slim = surgeon.slim(model, 0.5, x)
    slim.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    assert torch.equal(logits(again, x), logits(slim, x))


@pytest.mark.parametrize("name", ["bert", "gpt2-conv1d", "opt"])
def test_surgeon_save_where_the_config_cannot(name, tmp_path):
    model, kind = ENCODERS[name]() if name in ENCODERS else (DECODERS[name](), "decoder")
    x = inputs(kind)
    with pytest.warns(UserWarning, match="config cannot describe the slim model.*surgeon.save"):
        slim = surgeon.slim(liven(model), 0.5, x)
    surgeon.save(slim, tmp_path / "slim")
    again = surgeon.load(tmp_path / "slim")
    assert type(again) is type(model) and torch.equal(logits(again, x), logits(slim, x))


def test_gqa_query_heads_leave_equally_from_every_group():
    model = liven(DECODERS["llama-gqa"]())
    slim = slim_and_check(model, inputs("decoder"))
    attn = slim.model.layers[0].self_attn
    assert head_counts(attn) == (4, 2, 8) and attn.num_key_value_groups == 2
    assert (slim.config.num_attention_heads, slim.config.num_key_value_heads) == (4, 2)
    kept = [i for i in range(8) if any(torch.equal(slim.model.layers[0].self_attn.q_proj.weight[8 * j: 8 * j + 8],
                                                   model.model.layers[0].self_attn.q_proj.weight[8 * i: 8 * i + 8])
                                       for j in range(4))]
    assert sorted(h // 4 for h in kept) == [0, 0, 1, 1]  # two query heads of each key/value group


def test_prune_kv_heads_removes_whole_groups():
    model = liven(DECODERS["llama-gqa"]())
    x = inputs("decoder")
    slim = surgeon.slim(model, 0.5, x, prune_kv_heads=True)
    assert surgeon.verify(model, slim).ok
    assert head_counts(slim.model.layers[0].self_attn) == (4, 1, 8)
    assert slim.config.num_key_value_heads == 1 and slim.model.layers[0].self_attn.num_key_value_groups == 4


def test_vocabulary_and_tied_embeddings_stay():
    model = liven(DECODERS["gpt2-conv1d"]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = surgeon.slim(model, 0.5, inputs("decoder"))
    assert slim.lm_head.weight is slim.transformer.wte.weight
    assert slim.lm_head.weight.shape == model.lm_head.weight.shape
    assert slim.transformer.h[0].attn.split_size == 16 and slim.transformer.h[0].attn.c_attn.nf == 48


def test_prune_head_dims_is_refused_on_exported_attention():
    model = DECODERS["llama-gqa"]().eval()
    with pytest.raises(surgeon.InputError, match="prune_head_dims cannot narrow.*rotary"):
        surgeon.plan(model, 0.5, inputs("decoder"), prune_head_dims=True)


def test_fx_alone_cannot_trace_hugging_face_and_says_so():
    model = DECODERS["llama-gqa"]().eval()
    with pytest.raises(surgeon.TraceError, match="torch.fx could not trace LlamaForCausalLM"):
        surgeon.plan(model, 0.5, inputs("decoder"), frontend="fx")


def test_neither_frontend_names_both_failures():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum().item() > 0:  # a branch on data: fx cannot, export needs a guard it lacks
                return self.fc(x)
            return self.fc(x).tolist()

    with pytest.raises(surgeon.TraceError, match="torch.fx could not trace.*torch.export could not trace"):
        surgeon.plan(Untraceable(), 0.5, torch.ones(1, 4))


def test_export_frontend_gives_the_fx_plan_on_resnet18():
    import torchvision

    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    fx_plan = surgeon.plan(model, 0.5, x, frontend="fx")
    ex_plan = surgeon.plan(model, 0.5, x, frontend="export")
    assert {(c.tensor, c.dim): c.remove for c in fx_plan.cuts} == {(c.tensor, c.dim): c.remove for c in ex_plan.cuts}
    assert {g.spaces for g in fx_plan.groups} == {g.spaces for g in ex_plan.groups}
    assert set(fx_plan.sizes) == set(ex_plan.sizes)


def test_prune_embed_narrows_the_residual_stream_and_the_config(tmp_path):
    model = liven(DECODERS["llama-gqa"]())
    x = inputs("decoder")
    slim = surgeon.slim(model, 0.5, x, prune_embed=True)
    report = surgeon.verify(model, slim)
    assert report.ok and report.unchecked  # RMSNorm over the stream: reported, not checked
    assert slim.config.hidden_size == 32 and slim.model.embed_tokens.weight.shape == (100, 32)
    slim.save_pretrained(tmp_path)
    assert torch.equal(logits(type(model).from_pretrained(tmp_path).eval(), x), logits(slim, x))


def test_export_frontend_gives_the_fx_plan_on_vit_b_16():
    import torchvision

    model = torchvision.models.vit_b_16().eval()
    x = torch.randn(1, 3, 224, 224)
    fx_plan = surgeon.plan(model, 0.5, x, frontend="fx")
    ex_plan = surgeon.plan(model, 0.5, x, frontend="export")
    assert {(c.tensor, c.dim): c.remove for c in fx_plan.cuts} == {(c.tensor, c.dim): c.remove for c in ex_plan.cuts}
    assert {g.spaces for g in fx_plan.groups} == {g.spaces for g in ex_plan.groups}
    assert sum(fx_plan.removed) == sum(ex_plan.removed) > 0


class _WidthFromInput(nn.Module):
    """Attention whose head width is read from its input (as timm's ConViT, Twins, CrossViT):
    torch.export bakes `C // num_heads` into a literal, so the graph alone cannot tell."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def test_slim_keeps_a_module_whose_forward_rejects_its_slim_widths():
    model = nn.Sequential(nn.Linear(8, 16), _WidthFromInput(), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 3)).eval()
    x = torch.randn(2, 5, 8)
    slim = surgeon.slim(model, 0.5, x, frontend="export")
    assert slim[1].qkv.out_features == 48 and slim[2].out_features == 16  # attention kept, MLP halved
    reasons = [w for g in slim.surgeon_plan.groups for w in g.frozen_why]
    assert any("_WidthFromInput '1' does not run once its channels leave" in w for w in reasons)
    assert surgeon.verify(model, slim).ok


def test_a_second_failure_of_the_same_class_keeps_the_whole_class():
    """The first failing module is kept alone; when another of its class fails too, all are."""
    model = nn.Sequential(nn.Linear(8, 16), _WidthFromInput(), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16),
                          _WidthFromInput(), nn.Linear(16, 3)).eval()
    x = torch.randn(2, 5, 8)
    slim = surgeon.slim(model, 0.5, x, frontend="export")
    assert slim[1].qkv.out_features == slim[5].qkv.out_features == 48 and slim[2].out_features == 16
    reasons = {w for g in slim.surgeon_plan.groups for w in g.frozen_why}
    assert any("every _WidthFromInput keeps its channels" in w for w in reasons)
    assert surgeon.verify(model, slim).ok
