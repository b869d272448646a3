"""Texts packed end to end in one sequence (`prism_ops.hf.model.packed_hidden`), as the service
runs short embedding texts whole: each text's hidden states equal that text run alone through
the model, within fp32 (the same products summed in another order, a few ulps per layer; the
bound is 1e-4 of the output's scale, as tests/hf/test_model_zoo.py's). `packs` says where that
holds, checked on the model itself, and refuses the families where it does not: a causal text
tower, a local attention window the packed mask would not carry, a decoder. A half-precision
model packs as exactly as the padded batch it replaces (against a float64 oracle).
"""

import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prism_ops.hf import model as model_module  # noqa: E402
from prism_ops.hf.model import _in_float32, packed_hidden, packs  # noqa: E402
from prism_ops.serving.batching import pack, padded_request  # noqa: E402

from model_zoo import BY_ID  # noqa: E402


def on_sdpa(model):
    model.set_attn_implementation("sdpa")
    return model


def texts(model, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    pad = getattr(model.config, "pad_token_id", None)
    rows = torch.randint(2, model.config.vocab_size, (len(lengths), max(lengths)), generator=g)
    if pad is not None:  # a padding id inside a text would move RoBERTa's own positions
        rows = torch.where(rows == pad, torch.full_like(rows, 2 if pad != 2 else 3), rows)
    return [rows[i, :n].tolist() for i, n in enumerate(lengths)]


@pytest.mark.parametrize("family_id", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("lengths", [(1,), (7, 3, 19), (40, 1, 2, 33, 8)])
def test_packed_texts_equal_each_text_alone(family_id, lengths):
    model = on_sdpa(BY_ID[family_id].build())
    if "position_ids" not in inspect.signature(model.forward).parameters:
        pytest.skip(f"{family_id}'s forward takes no position_ids on transformers {transformers.__version__}")
    assert packs(model)
    rows = texts(model, lengths)
    with torch.no_grad():
        h, valid = packed_hidden(model, rows)
        assert h.shape == (len(rows), max(lengths), model.config.hidden_size if family_id != "distilbert" else
                           model.config.dim)
        assert valid.tolist() == [[j < n for j in range(max(lengths))] for n in lengths]
        for r, row in enumerate(rows):
            alone = model.base_model(input_ids=torch.tensor([row])).last_hidden_state[0]
            err = (h[r, :len(row)] - alone).abs().max().item()
            assert err <= 1e-4 * max(1.0, alone.abs().max().item()), (family_id, r, err)
            assert not h[r, len(row):].any()  # right padding is zeros, never another text's states


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family_id,why", [("modernbert", "a local window of 16 the packed mask does not carry"),
                                          ("clip-text", "a causal text tower"), ("gpt2", "a decoder")])
def test_families_packing_would_change_are_refused(family_id, why, dtype):
    """In half precision too, and the model is left as it was. (In bf16 these would be refused
    even by a check in bf16, whose rounding alone exceeds the float32 tolerance: that the check
    runs in float32 is the next test's.)"""
    model = on_sdpa(BY_ID[family_id].build()).to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not packs(model), why
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_packs_as_exactly_as_a_padded_batch(dtype):
    """A model in fp16 or bf16 (a Jetson's) packs: against each text alone through the model in
    float64 (the oracle), the packed texts err no more than the padded batch packing replaces,
    within a factor of 2 (both are the dtype's rounding, the products in other shapes; the
    same for every text, 1 to 40 tokens)."""
    model = on_sdpa(BY_ID["bert"].build())
    oracle = {}
    rows = texts(model, (40, 1, 7, 33, 19, 2))
    with torch.no_grad():
        model64 = model.to(torch.float64)
        for r, row in enumerate(rows):
            oracle[r] = model64.base_model(input_ids=torch.tensor([row])).last_hidden_state[0]
        model = model64.to(dtype)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        seen = []  # the dtype of the model's weights while packs runs its packed forward
        real = model_module.packed_hidden

        def spy(m, rs):
            seen.append(next(m.parameters()).dtype)
            return real(m, rs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(model_module, "packed_hidden", spy)
            assert packs(model)  # checked in float32, then put back exactly
        assert seen == [torch.float32]
        assert all(torch.equal(model.state_dict()[k], v) and model.state_dict()[k].dtype == dtype
                   for k, v in before.items() if v.is_floating_point())
        h, _ = packed_hidden(model, rows)
        batch = padded_request(rows)  # the service's padded layout
        padded = model.base_model(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
    assert h.dtype == dtype
    packed_err = max((h[r, :len(row)].double() - oracle[r]).abs().max().item() for r, row in enumerate(rows))
    padded_err = max((padded[r, :len(row)].double() - oracle[r]).abs().max().item() for r, row in enumerate(rows))
    assert 0 < padded_err and packed_err <= 2 * padded_err, (packed_err, padded_err)


def test_pack_keeps_order_and_the_budget():
    g = torch.Generator().manual_seed(3)
    for budget in (1, 16, 50, 256):
        rows = [[0] * n for n in torch.randint(1, 60, (30,), generator=g).tolist()]
        groups = pack(rows, budget)
        assert [i for grp in groups for i in grp] == list(range(len(rows)))  # in order, each once
        for grp in groups:
            assert sum(len(rows[i]) for i in grp) <= budget or len(grp) == 1  # a longer text runs alone
        for a, b in zip(groups, groups[1:]):  # a group closes only when the next text would not fit
            assert sum(len(rows[i]) for i in a) + len(rows[b[0]]) > budget
    assert pack([], 8) == []


def test_the_float32_check_puts_every_tensor_back_in_its_own_dtype():
    """A half-precision model may keep some modules in float32 on purpose (transformers'
    _keep_in_fp32_modules): after the check each tensor has its own dtype and values again,
    however the block ended, and only float16 and bfloat16 tensors were touched."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.float16), torch.nn.LayerNorm(4))
    model.register_buffer("table", torch.arange(3, dtype=torch.bfloat16))
    model.register_buffer("steps", torch.arange(3))  # not floating: untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with _in_float32(model):
        assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    after = model.state_dict()
    assert {k: v.dtype for k, v in after.items()} == {k: v.dtype for k, v in before.items()}
    assert all(torch.equal(after[k], v) for k, v in before.items())
    model.register_buffer("wide", torch.arange(3, dtype=torch.float64))  # not half: left alone
    with pytest.raises(RuntimeError, match="in the block"), _in_float32(model):
        assert model.wide.dtype == torch.float64 and model.table.dtype == torch.float32
        raise RuntimeError("in the block")
    assert model[0].weight.dtype == torch.float16 and model.table.dtype == torch.bfloat16  # put back all the same
