"""One request from a job's options: the model, the input text, its tokens, and the report.

    tok, model = load_model(opts)
    text = read_text(opts)                                  # --input, or --input-file read bounded
    req = make_request(tok, opts, text, max_positions(model), pooling)
    print_result(opts, model, tok, result, num_partitions, config, seconds, simulated=False)
"""

from __future__ import annotations

import sys

import torch

from ..config import PrismConfig
from ..request_types import Request, RequestError, Result, too_long
from ..input_files import read_text_file
from ..models import load, pooling_for
from ..pooling import Pooling
from ..report import build_report, print_report
from .options import AskOptions, JobOptions


def load_model(opts: JobOptions):
    """(tokenizer, model) of opts.model in opts.dtype, the same on every rank."""
    torch.manual_seed(0)
    return load(opts.model, opts.torch_dtype)


def read_text(opts: AskOptions) -> str:
    """The input text: --input, or --input-file read bounded (`input_files.read_text_file`).
    RequestError naming the flag when it is empty."""
    if opts.input_file is not None:
        text = read_text_file(opts.input_file, "--input-file")
    elif opts.text is not None:
        text = opts.text
    else:
        raise ValueError("the request needs text or input_file")
    if not text.strip():
        raise RequestError(f"the input is empty ({'--input' if opts.input_file is None else '--input-file'})")
    return text


def make_request(tok, opts: AskOptions, text: str | None = None, limit: int | None = None,
                 pooling: Pooling | None = None) -> Request:
    """The request for text (default: read_text); limit: the model's positions, if known;
    pooling: how an embedding is pooled (default: `models.pooling_for(opts.model)`)."""
    text = read_text(opts) if text is None else text
    if not text.strip():
        raise RequestError("the input is empty")
    why = too_long(limit, chars=len(text))  # refused before it is tokenized whole
    if why:
        raise RequestError(why)
    # verbose=False: no warning past the tokenizer's model_max_length; the length was checked above.
    ids = torch.tensor([tok(text, verbose=False)["input_ids"]], dtype=torch.long)
    return Request(ids=ids, output=opts.output, generate=opts.generate, temperature=opts.temperature,
                   top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed,
                   pooling=pooling_for(opts.model) if pooling is None else pooling)


def print_result(opts, model, tok, res: Result, num_partitions: int, config: PrismConfig, seconds: dict,
                 simulated: bool) -> None:
    """The report of one request on stdout (`prism_ops.report`; with opts.json its JSON line)."""
    obj = build_report(res, model_name=opts.model, model=model, tokenizer=tok, config=config,
                       num_partitions=num_partitions, output=opts.output, dtype=opts.torch_dtype, seconds=seconds,
                       simulated=simulated)
    print_report(obj, file=sys.stdout, json_line=opts.json, verbose=opts.verbose)
