"""A tiny Hugging Face decoder folder for prism-run tests that need a model but not real weights.

    folder = write_tiny_gpt2(tmp_path / "tiny")     # config.json, model.safetensors, tokenizer.json

GPT-2 with 2 layers of width 32, 64 positions and a word-level tokenizer of 100 words, seeded:
it loads in well under a second, so a test's time goes to what it checks.
"""

from pathlib import Path

WORDS = [f"w{i}" for i in range(96)]
TEXT = " ".join(WORDS[:40])  # 40 tokens


def write_tiny_gpt2(folder) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = Path(folder)
    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", "<pad>", "<bos>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(vocab), bos_token_id=3,
                     eos_token_id=0)
    GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
