"""prism attention as a drop-in on every model family of `tests/model_zoo.py` (tiny random weights).

For each supported family: the exact preset (segment size 1) at 2 simulated partitions equals
the model on SDPA (eager for Gemma 2, whose soft-cap SDPA refuses) on a padded batch; a decoder
also greedily generates the same 8 tokens; the `edge` preset runs at 2 partitions. A refused
family is refused at configure, before any forward, with its message. Every keyword a family's
attention call passes is one `prism_ops.hf.attention_calls` knows, read from the source and recorded
at a real call. README.md's family table is the list's.

Error budget (fp32): prism attention and SDPA sum the same products in another order (two
partitions merged by log-sum-exp), a few ulps per layer; through 2 layers and the LM head that
is below 1e-5 of the output's scale. The bound is 1e-4 of the scale.
"""

import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

import prism_ops  # noqa: E402
from prism_ops import hf  # noqa: E402
from prism_ops.hf.attention_calls import KNOWN, call_keywords, eager_parameters  # noqa: E402
from prism_ops.hf.forward import _padding_from_mask  # noqa: E402

from launch import ROOT  # noqa: E402
from model_zoo import BY_ID, FAMILIES, FLOOR, inputs, readme_table, release  # noqa: E402

INSTALLED = transformers.__version__  # what each family does depends on the release (model_zoo.Family.refusal)
SUPPORTED = [f for f in FAMILIES if not f.refusal(INSTALLED)]
REFUSED = [f for f in FAMILIES if f.refusal(INSTALLED)]
DECODERS = [f for f in SUPPORTED if f.kind == "decoder"]
README = ROOT / "README.md"


def ids(families):
    return [f.id for f in families]


def skip_if_refused(family_id):
    if BY_ID[family_id].refusal(INSTALLED):
        pytest.skip(f"{family_id} is refused on transformers {INSTALLED} (test_refused_at_configure_with_the_reason)")


def output(model, family, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if family.kind == "decoder" else out.last_hidden_state


def real_rows(family, batch):
    """[B, T] bool of the positions to compare (real tokens; everything for images and audio)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].bool()
    return None


def assert_close_to(got, ref, rows):
    if rows is not None:
        got, ref = got[rows], ref[rows]
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    assert err <= 1e-4 * max(1.0, scale), (err, scale)


def at_preset(family, preset):
    """The family's output on its SDPA/eager attention, then at `preset` over 2 partitions, and the batch."""
    model = family.build()
    batch = inputs(family)
    ref = output(model, family, batch)
    hf.configure(model, num_partitions=2, preset=preset)
    return ref, output(model, family, batch), batch


@pytest.mark.parametrize("family", SUPPORTED, ids=ids(SUPPORTED))
def test_exact_preset_equals_the_model(family):
    ref, got, batch = at_preset(family, "exact")
    assert_close_to(got, ref, real_rows(family, batch))


@pytest.mark.parametrize("family", DECODERS, ids=ids(DECODERS))
def test_decoder_generates_the_same_8_tokens(family):
    model = family.build()
    prompt = inputs(family, batch=1, pad=0)["input_ids"]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(prompt, **kw)
        hf.configure(model, num_partitions=2, preset="exact")
        with prism_ops.request_scope():
            got = model.generate(prompt, **kw)
    assert got.shape == (1, prompt.shape[1] + 8)
    assert got.tolist() == ref.tolist()


@pytest.mark.parametrize("family", SUPPORTED, ids=ids(SUPPORTED))
def test_edge_preset_runs_at_2_partitions(family):
    ref, got, _ = at_preset(family, "edge")
    assert got.shape == ref.shape and bool(torch.isfinite(got).all())


@pytest.mark.parametrize("family", REFUSED, ids=ids(REFUSED))
def test_refused_at_configure_with_the_reason(family):
    model = family.build()
    with pytest.raises((ValueError, NotImplementedError), match=family.refusal(INSTALLED)):
        hf.configure(model, num_partitions=2, preset="exact")


def test_the_installed_transformers_is_not_older_than_the_floor():
    assert release(INSTALLED) >= release(FLOOR), f"transformers {INSTALLED} is older than the floor {FLOOR}"


def _recorder(seen):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as capped
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as with_sinks

    def record(module, query, key, value, attention_mask, **kwargs):
        seen.update(kwargs)
        if kwargs.get("softcap") is not None:
            return capped(module, query, key, value, attention_mask, **kwargs)
        if kwargs.get("s_aux") is not None:
            return with_sinks(module, query, key, value, attention_mask, **kwargs)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    return record


@pytest.mark.parametrize("family", FAMILIES, ids=ids(FAMILIES))
def test_every_attention_keyword_is_known(family):
    """The keywords of each attention module's call (source), of its family's eager function,
    and those a real forward passes, are all handled, ignored or refused by name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    model = family.build()
    calls = {type(m): call_keywords(type(m)) for m in model.modules()}
    calls = {cls: kws for cls, kws in calls.items() if kws is not None}
    if family.refusal(INSTALLED) and "computes attention itself" in family.refusal(INSTALLED):
        assert not calls  # it does not go through transformers' attention interface
        return
    assert calls
    for cls, kws in calls.items():
        assert {name for name, _ in kws} <= KNOWN, (cls.__name__, kws)
        assert set(eager_parameters(cls)) <= KNOWN, (cls.__name__, eager_parameters(cls))
    seen = {}
    AttentionInterface.register("zoo-record", _recorder(seen))
    AttentionMaskInterface.register("zoo-record", sdpa_mask)
    model.set_attn_implementation("zoo-record")
    output(model, family, inputs(family))
    assert seen and set(seen) <= KNOWN, sorted(set(seen) - KNOWN)


def test_the_readme_table_is_the_list():
    text = README.read_text()
    block = re.search(r"<!-- model-zoo:start -->\n(.*?)\n<!-- model-zoo:end -->", text, re.S)
    assert block, "README.md has no <!-- model-zoo:start --> ... <!-- model-zoo:end --> block"
    assert block.group(1).strip() == readme_table(), "regenerate it: python tests/model_zoo.py"


# -- bad input: clear errors at configure, never a traceback from deep inside a forward ------------

def test_an_unknown_attention_keyword_is_refused_at_configure():
    from transformers.models.llama import modeling_llama

    class OddAttention(modeling_llama.LlamaAttention):
        def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
            attention_interface = modeling_llama.ALL_ATTENTION_FUNCTIONS.get_interface(  # noqa: F841
                self.config._attn_implementation, modeling_llama.eager_attention_forward)
            return attention_interface(self, hidden_states, hidden_states, hidden_states, attention_mask,
                                       scaling=self.scaling, temperature=2.0, **kwargs)

    model = BY_ID["llama"].build()
    model.model.layers[1].self_attn.__class__ = OddAttention
    with pytest.raises(NotImplementedError, match=r"LlamaForCausalLM \(OddAttention\).*`temperature`"):
        hf.configure(model, num_partitions=2, preset="exact")


def test_a_window_larger_than_the_positions_is_refused():
    model = BY_ID["mistral"].build()
    model.config.max_position_embeddings = 8
    with pytest.raises(ValueError, match=r"sliding_window=16 larger than its max_position_embeddings=8"):
        hf.configure(model, num_partitions=2, preset="exact")


def test_a_model_without_the_attention_interface_is_refused():
    model = BY_ID["bloom"].build()
    with pytest.raises(ValueError, match="no attention module that calls transformers' attention interface"):
        hf.configure(model, num_partitions=2, preset="exact")


def test_hidden_exchange_is_refused_with_rotary_and_auto_says_kv(caplog):
    model = BY_ID["phi3"].build()
    with pytest.raises(ValueError, match="exchange='hidden' is not possible here: the model uses rotary"):
        hf.configure(model, num_partitions=2, segment_size=1, exchange="hidden")
    with caplog.at_level("INFO", logger="prism_ops"):
        hf.configure(model, num_partitions=2, segment_size=1, exchange="auto")
    assert hf.config_of(model).exchange == "kv"
    assert "exchanges K/V rows for Phi3ForCausalLM" in caplog.text


def test_a_mask_that_is_not_causal_plus_padding_is_refused():
    T = 6
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    packed = causal.clone()
    packed[3:, :3] = False  # two packed sequences of 3
    assert _padding_from_mask(causal[None, None], T, causal=True).all()
    with pytest.raises(ValueError, match="attention_mask is not causal attention plus key padding"):
        _padding_from_mask(packed[None, None], T, causal=True)
    with pytest.raises(ValueError, match="with a sliding window of 2"):
        _padding_from_mask(causal[None, None], T, causal=True, window=2)


@pytest.mark.parametrize("family_id", ["phi3", "gpt-neox", "modernbert", "falcon", "falcon-grouped"])
def test_fused_projection_slices_are_the_models_keys_and_values(family_id):
    """kv_weight's slices of a fused qkv projection give the K and V the model computes."""
    skip_if_refused(family_id)
    model = BY_ID[family_id].build()
    m = hf.attention_modules(model)[0]
    (w_k, w_v), (b_k, b_v) = hf.kv_weight(m), hf.kv_bias(m)
    seen = {}
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    captured = {}

    def hook(mod, args, kwargs):
        captured.setdefault("h", args[0] if args else kwargs["hidden_states"])

    handle = m.register_forward_pre_hook(hook, with_kwargs=True)

    def grab(module, query, key, value, attention_mask, **kwargs):
        captured.setdefault("v", value)
        return _recorder(seen)(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("zoo-grab", grab)
    AttentionMaskInterface.register("zoo-grab", sdpa_mask)
    model.set_attn_implementation("zoo-grab")
    output(model, BY_ID[family_id], inputs(BY_ID[family_id]))
    handle.remove()
    h, v = captured["h"], captured["v"]  # V has no rotary embedding: compare it directly
    B, T, _ = h.shape
    v_hat = torch.nn.functional.linear(h, w_v, b_v).view(B, T, -1, v.shape[-1]).transpose(1, 2)
    torch.testing.assert_close(v_hat, v, rtol=1e-5, atol=1e-5)
    assert w_k.shape == w_v.shape and (b_k is None) == (b_v is None)


# -- real MPI: a sliding-window decoder and a fused-QKV encoder with local layers, 2 ranks -------

MPI_CASES = [
    ("mistral", dict(tokens=40, generate=8)),  # sliding window 16, prefill and 8 greedy tokens
    ("modernbert", dict(tokens=40, batch=2, pad=5)),  # fused Wqkv, bidirectional window on layer 1
]


@pytest.mark.parametrize("family_id,kw", MPI_CASES, ids=[c[0] for c in MPI_CASES])
def test_under_real_mpiexec_2_ranks_equals_the_model(family_id, kw):
    from launch import MPIEXEC, check_run

    if MPIEXEC is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    skip_if_refused(family_id)
    r = check_run(2, model=family_id, segment_size=1, **kw)
    assert r["err_exact"] <= 1e-4 * max(1.0, r["scale"]), r
    assert r["err_sim"] <= 1e-5 * max(1.0, r["scale"]) * 2, r
    assert r["bytes"] == r["layer_bytes"], r  # what the wire layout (and so the cost model) says
    if kw.get("generate"):
        assert r["ids"] == r["ids_exact"] == r["ids_sim"] and len(r["ids"][0]) == kw["generate"]


TEXT = [f for f in SUPPORTED if f.kind in ("encoder", "decoder")]


@pytest.mark.parametrize("family", TEXT, ids=ids(TEXT))
def test_the_runtimes_forward_equals_the_model(family):
    """What prism-run and the service run (`run_simulated`, which hands the model explicit
    positions) equals the model left to number its positions itself: RoBERTa-style embeddings
    count from padding_idx + 1, not 0."""
    from prism_ops.in_process import run_simulated
    from prism_ops.request_types import Request

    model = family.build()
    pad = getattr(model.config, "pad_token_id", None)
    ids = inputs(family, batch=1, pad=0)["input_ids"]
    if pad is not None:  # the model's own positions skip a padding id
        ids = torch.where(ids == pad, torch.full_like(ids, 3 if pad != 3 else 4), ids)
    with torch.no_grad():
        ref = model.base_model(input_ids=ids).last_hidden_state
    got = run_simulated(model, Request(ids=ids, output="hidden"), 1).output
    assert_close_to(got, ref, None)


def test_roberta_positions_start_after_the_padding_index():
    from prism_ops.hf.model import max_positions, position_offset
    from prism_ops.in_process import run_simulated
    from prism_ops.request_types import Request

    model = BY_ID["roberta"].build()
    pad = model.config.pad_token_id
    assert position_offset(model) == pad + 1 and position_offset(BY_ID["bert"].build()) == 0
    n = max_positions(model)
    assert n == model.config.max_position_embeddings - pad - 1
    ids = torch.arange(n)[None] % 100 + pad + 1  # the longest text it takes, no padding id inside
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state
    assert_close_to(run_simulated(model, Request(ids=ids, output="hidden"), 1).output, ref, None)


@pytest.mark.parametrize("name,extra", [("Bert", {}), ("Electra", {}), ("Roberta", {}), ("XLMRoberta", {}),
                                        ("Camembert", {}), ("MPNet", {}), ("IBert", {}), ("Data2VecText", {}),
                                        ("Esm", dict(position_embedding_type="absolute", pad_token_id=1))])
def test_position_offset_matches_each_familys_own_numbering(name, extra):
    """Explicit positions 0.. shifted by `position_offset` give what the model numbers itself,
    whether transformers keeps the numbering on the embeddings class (RoBERTa) or in its module
    (MPNet, ESM); 0 where it numbers from 0 (BERT, ELECTRA)."""
    from prism_ops.hf.model import position_offset

    config = getattr(transformers, f"{name}Config")(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, vocab_size=64, **extra)
    model = getattr(transformers, f"{name}Model")(config).eval()
    ids = torch.arange(5, 17)[None]
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state
        got = model(input_ids=ids, position_ids=torch.arange(12)[None] + position_offset(model)).last_hidden_state
    assert_close_to(got, ref, None)
    assert (position_offset(model) == 0) == (name in ("Bert", "Electra"))
