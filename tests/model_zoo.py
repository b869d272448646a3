"""The model families prism attention is tried on: tiny random-weight configs, one per family.

Each `Family` builds a 2-layer model from transformers' own config class (hidden size 64,
4 heads), in eval mode with seeded weights, and says whether `prism_ops.hf.configure` supports
it or refuses it (with the message) on each transformers release: a family can move onto
transformers' attention interface in a later release (ModernBERT in 5.1, Falcon in 5.25), and
what the adapter does follows. `tests/hf/test_model_zoo.py` runs them on the installed release (CI:
the newest, and the floor that pyproject.toml names); README.md's family table is
`readme_table()` of this list, one column per release in `RELEASES` (a test compares the two).

    python tests/model_zoo.py     # print the README table
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# The oldest transformers the project claims (pyproject.toml's floor) and the newest release tried
# (CI installs the newest there is; a release past this one that changes a family fails a test
# until this list says what it does).
FLOOR = re.search(r'"transformers>=([0-9.]+)"', PYPROJECT.read_text()).group(1)
NEWEST = "5.25"
RELEASES = (FLOOR, NEWEST)


def release(version: str) -> tuple[int, ...]:
    """'5.25.0' or '5.1.0.dev0' -> (5, 25, 0) or (5, 1, 0), for comparing releases."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split(".dev")[0].split("rc")[0])[:3])

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128)
TOKENS = 40  # a prompt longer than the sliding windows below (16), so they bind
WINDOW = 16


@dataclass(frozen=True)
class Family:
    """One model family: `build()` gives the model; `kind` says what it takes as input."""

    id: str
    kind: str  # "decoder" (token ids, causal LM head), "encoder" (token ids), "image", "audio"
    config: str  # transformers' config class
    model: str  # transformers' model class built
    kw: tuple = ()  # config keywords, as (name, value) pairs
    note: str = ""  # what the family exercises, for the README table
    refused: str | None = None  # the configure error's message (a regex), when refused on every release
    refused_before: tuple = ()  # (release, message regex, why in words): refused so on releases before it
    reference: str = "sdpa"  # the attention implementation prism attention is compared with

    def refusal(self, version: str) -> str | None:
        """The configure error's message (a regex) on transformers `version`, or None if supported."""
        if self.refused_before and release(version) < release(self.refused_before[0]):
            return self.refused_before[1]
        return self.refused

    def status(self, version: str) -> str:
        """What the adapter does with this family on `version`, in words (the README's cell)."""
        if self.refusal(version) is None:
            return "supported"
        if self.refusal(version) == self.refused:
            return "refused (see notes)"
        return f"refused: {self.refused_before[2]}"

    def build(self):
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, self.config)(**dict(self.kw))
        if self.model == "WhisperEncoder":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder as cls
        else:
            cls = getattr(transformers, self.model)
        model = cls(cfg).eval()
        model.set_attn_implementation(self.reference)
        return model


def _kw(**kw):
    return tuple(sorted(kw.items()))


_GQA = dict(SMALL, num_key_value_heads=2)
_VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
               patch_size=4)

FAMILIES = [
    # Decoders.
    Family("llama", "decoder", "LlamaConfig", "LlamaForCausalLM", _kw(**_GQA), "grouped-query attention"),
    Family("qwen2", "decoder", "Qwen2Config", "Qwen2ForCausalLM",
           _kw(**_GQA, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
           f"sliding window {WINDOW} on layer 1"),
    Family("qwen3", "decoder", "Qwen3Config", "Qwen3ForCausalLM", _kw(**_GQA, head_dim=16), "q/k norms"),
    Family("mistral", "decoder", "MistralConfig", "MistralForCausalLM", _kw(**_GQA, sliding_window=WINDOW),
           f"sliding window {WINDOW}"),
    Family("gemma", "decoder", "GemmaConfig", "GemmaForCausalLM", _kw(**_GQA, head_dim=16), ""),
    Family("gemma2", "decoder", "Gemma2Config", "Gemma2ForCausalLM", _kw(**_GQA, head_dim=16, sliding_window=WINDOW),
           f"logit soft-cap 50, sliding window {WINDOW} on alternate layers", reference="eager"),
    Family("gemma3-text", "decoder", "Gemma3TextConfig", "Gemma3ForCausalLM",
           _kw(**_GQA, head_dim=16, sliding_window=WINDOW), f"sliding window {WINDOW} (local layers)"),
    Family("phi3", "decoder", "Phi3Config", "Phi3ForCausalLM", _kw(**_GQA, pad_token_id=0, sliding_window=WINDOW),
           f"fused qkv_proj, sliding window {WINDOW}"),
    Family("gpt-neox", "decoder", "GPTNeoXConfig", "GPTNeoXForCausalLM", _kw(**SMALL),
           "fused query_key_value (per head), partial rotary"),
    Family("gpt2", "decoder", "GPT2Config", "GPT2LMHeadModel", _kw(n_embd=64, n_layer=2, n_head=4, vocab_size=128),
           "fused c_attn (Conv1D), hidden exchange"),
    Family("opt", "decoder", "OPTConfig", "OPTForCausalLM",
           _kw(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, vocab_size=128,
               word_embed_proj_dim=64), "hidden exchange"),
    Family("olmo2", "decoder", "Olmo2Config", "Olmo2ForCausalLM", _kw(**_GQA), "q/k norms"),
    # pad_token_id: 5.0's StableLmConfig has none by default and its model reads it.
    Family("stablelm", "decoder", "StableLmConfig", "StableLmForCausalLM", _kw(**_GQA, pad_token_id=0), "partial rotary"),
    Family("granite", "decoder", "GraniteConfig", "GraniteForCausalLM", _kw(**_GQA), "attention multiplier"),
    Family("smollm3", "decoder", "SmolLM3Config", "SmolLM3ForCausalLM", _kw(**_GQA, pad_token_id=0),
           "no rotary on every 4th layer"),
    Family("falcon", "decoder", "FalconConfig", "FalconForCausalLM",
           _kw(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128),
           "multi-query attention, fused query_key_value, rotary",
           refused_before=("5.25", "FalconAttention computes attention itself",
                           "computes attention itself")),
    Family("falcon-grouped", "decoder", "FalconConfig", "FalconForCausalLM",
           _kw(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
               new_decoder_architecture=True, num_kv_heads=2),
           "grouped query_key_value (Falcon-40B's layout), rotary",
           refused_before=("5.25", "FalconAttention computes attention itself", "computes attention itself")),
    Family("falcon-alibi", "decoder", "FalconConfig", "FalconForCausalLM",
           _kw(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128, alibi=True),
           "ALiBi position bias (in the attention mask)", refused="ALiBi position bias",
           refused_before=("5.25", "FalconAttention computes attention itself",
                           "computes attention itself")),
    Family("bloom", "decoder", "BloomConfig", "BloomForCausalLM",
           _kw(hidden_size=64, n_layer=2, n_head=4, vocab_size=128),
           "computes attention itself (not through transformers' attention interface)",
           refused="BloomAttention computes attention itself"),
    Family("gpt-oss", "decoder", "GptOssConfig", "GptOssForCausalLM",
           _kw(**_GQA, head_dim=16, num_local_experts=2, num_experts_per_tok=1, sliding_window=WINDOW),
           "attention-sink logits (s_aux)", refused="uses attention-sink logits", reference="eager"),
    # Encoders.
    Family("bert", "encoder", "BertConfig", "BertModel", _kw(**SMALL), "hidden exchange"),
    Family("roberta", "encoder", "RobertaConfig", "RobertaModel", _kw(**SMALL), "hidden exchange"),
    Family("distilbert", "encoder", "DistilBertConfig", "DistilBertModel",
           _kw(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=128), "k_lin/v_lin, hidden exchange"),
    Family("modernbert", "encoder", "ModernBertConfig", "ModernBertModel",
           _kw(**SMALL, local_attention=WINDOW, global_attn_every_n_layers=2, pad_token_id=0),
           f"fused Wqkv, bidirectional local window {WINDOW} on layer 1",
           refused_before=("5.1", "ModernBertAttention computes attention itself",
                           "computes attention itself")),
    Family("vit", "image", "ViTConfig", "ViTModel", _kw(**_VISION), "hidden exchange"),
    Family("deit", "image", "DeiTConfig", "DeiTModel", _kw(**_VISION), "two special tokens"),
    Family("clip-text", "encoder", "CLIPTextConfig", "CLIPTextModel",
           _kw(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128,
               max_position_embeddings=64), "causal text tower"),
    Family("clip-vision", "image", "CLIPVisionConfig", "CLIPVisionModel", _kw(**_VISION), "vision tower"),
    Family("whisper-encoder", "audio", "WhisperConfig", "WhisperEncoder",
           _kw(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
               decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=32,
               vocab_size=128), "audio encoder"),
]
BY_ID = {f.id: f for f in FAMILIES}


def inputs(family: Family, *, batch: int = 2, pad: int = 5, tokens: int = TOKENS) -> dict:
    """Seeded inputs: token ids with padding (left for decoders, right for encoders) on the last
    row, 32x32 images, or 64 frames of 16 mel bins."""
    g = torch.Generator().manual_seed(1)
    if family.kind == "image":
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g)}
    if family.kind == "audio":
        return {"input_features": torch.randn(batch, 16, 64, generator=g)}
    ids = torch.randint(1, 128, (batch, tokens), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        if family.kind == "decoder":
            mask[-1, :pad] = 0
        else:
            mask[-1, -pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def readme_table() -> str:
    """The README's table of families, from FAMILIES: what the adapter does on each of RELEASES."""
    head = ["family", "kind", "transformers class"] + [f"transformers {r}" for r in RELEASES] + ["notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for f in FAMILIES:
        cells = [f.id, f.kind, f"`{f.model}`"] + [f.status(r) for r in RELEASES] + [f.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(readme_table())
