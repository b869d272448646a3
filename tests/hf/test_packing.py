"""Texts packed end to end in one sequence (`prism_ops.hf.model.packed_hidden`), as the service
runs short embedding texts whole: each text's hidden states equal that text run alone through
the model, within fp32 (the same products summed in another order, a few ulps per layer; the
bound is 1e-4 of the output's scale, as tests/hf/test_model_zoo.py's). `packs` says where that
holds, checked on the model itself, and refuses the families where it does not: a causal text
tower, a local attention window the packed mask would not carry, a decoder.
"""

import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prism_ops.hf.model import packed_hidden, packs  # noqa: E402
from prism_ops.serving.batching import pack  # noqa: E402

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


@pytest.mark.parametrize("family_id,why", [("modernbert", "a local window of 16 the packed mask does not carry"),
                                          ("clip-text", "a causal text tower"), ("gpt2", "a decoder")])
def test_families_packing_would_change_are_refused(family_id, why):
    assert not packs(on_sdpa(BY_ID[family_id].build())), why


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
