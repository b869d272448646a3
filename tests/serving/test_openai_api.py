"""The service's request checks and response shapes (prism_ops.serving.openai_api), without MPI."""

import base64

import numpy as np
import pytest

from prism_ops.serving.openai_api import (ApiError, Served, chunk_body, completion_body, cut_at_stop, embeddings_body,
                                          parse, safe_length, usage_chunk)

ENCODER = Served("minilm", decoder=False, max_positions=512, width=384, vocab_size=30522)
DECODER = Served("smollm2", decoder=True, max_positions=8192, width=576, vocab_size=49152)


def test_good_requests():
    job = parse("embeddings", {"model": "minilm", "input": ["a", "b"], "encoding_format": "float"}, ENCODER)
    assert job.texts == ["a", "b"] and job.endpoint == "embeddings"
    job = parse("completions", {"prompt": "hi", "max_tokens": 4, "temperature": 0, "stream": True, "n": 1}, DECODER)
    assert (job.texts, job.max_tokens, job.temperature, job.stream) == (["hi"], 4, 0, True)
    job = parse("chat", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3}, DECODER)
    assert job.chat and job.max_tokens == 3 and job.top_p == 1.0


def test_embeddings_inputs_formats_and_dimensions():
    assert parse("embeddings", {"input": "a"}, ENCODER).encoding_format == "float"
    job = parse("embeddings", {"input": ["a"], "encoding_format": "base64", "dimensions": 384, "user": "u1"}, ENCODER)
    assert job.encoding_format == "base64" and job.texts == ["a"]
    job = parse("embeddings", {"input": [101, 7592, 102]}, ENCODER)  # one list of token ids
    assert job.ids == [[101, 7592, 102]] and job.texts == []
    job = parse("embeddings", {"input": [[101, 102], [101, 7592, 102]]}, ENCODER)
    assert job.ids == [[101, 102], [101, 7592, 102]]


def test_base64_is_little_endian_float32_as_openai_sends():
    vec = [0.5, -0.25, 1e-3, 3.0]
    body = embeddings_body(ENCODER, [(vec, 2, {})], "base64")
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert len(raw) == 16 and np.frombuffer(raw, dtype="<f4").tolist() == np.float32(vec).tolist()


def test_completion_options():
    job = parse("completions", {"prompt": "a", "stop": "\n", "user": "u", "seed": 7}, DECODER)
    assert job.stop == ["\n"] and job.seed == 7
    job = parse("chat", {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d"],
                         "stream": True, "stream_options": {"include_usage": True}, "logprobs": False}, DECODER)
    assert job.stop == ["a", "b", "c", "d"] and job.include_usage
    chunk = chunk_body(DECODER, job, "x")
    assert chunk["usage"] is None
    last = usage_chunk(DECODER, job, {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 3


def test_stop_sequences_cut_and_hold_back():
    assert cut_at_stop("Paris. Next", [".", "Next"]) == ("Paris", True)
    assert cut_at_stop("Paris", ["."]) == ("Paris", False)
    # "Paris\nQ" could still become "Paris\nQuestion": hold "\nQ" back, stream "Paris".
    assert safe_length("Paris\nQ", ["\nQuestion"]) == 5
    assert safe_length("Paris", ["\nQuestion"]) == 5 and safe_length("abc", []) == 3


@pytest.mark.parametrize("endpoint,body,served,param,message", [
    ("embeddings", [1, 2], ENCODER, None, "must be a JSON object"),
    ("embeddings", {"input": "  "}, ENCODER, "input", "must not contain empty strings"),
    ("embeddings", {"input": ["a", 3]}, ENCODER, "input", "list of strings"),
    ("embeddings", {"input": "a", "model": "bert"}, ENCODER, "model", "is not served here"),
    ("embeddings", {"input": "a", "dimensions": 64}, ENCODER, "dimensions", "is not supported.*384 dimensions"),
    ("embeddings", {"input": "a", "encoding_format": "int8"}, ENCODER, "encoding_format", "'float' or 'base64'"),
    ("embeddings", {"input": [101, 99999]}, ENCODER, "input", "token id 99999, outside the vocabulary"),
    ("embeddings", {"input": [[101, 102], [-1, 5]]}, ENCODER, "input", "input\\[1\\] has token id -1"),
    ("embeddings", {"input": [[101, 102], []]}, ENCODER, "input", "input\\[1\\] is an empty list"),
    ("embeddings", {"input": []}, ENCODER, "input", "non-empty"),
    ("embeddings", {"input": [[1, 2], "a"]}, ENCODER, "input", "list of token-id lists"),
    ("embeddings", {"input": "a", "encoding_format": "base64"}, DECODER, "model", "is a decoder"),
    ("embeddings", {"input": "a", "user": 3}, ENCODER, "user", "must be a string"),
    ("embeddings", {"input": "a", "bogus": 1}, ENCODER, "bogus", "unknown field"),
    ("embeddings", {"input": "a"}, DECODER, "model", "is a decoder"),
    ("completions", {"prompt": "a"}, ENCODER, "model", "is an encoder"),
    ("completions", {"prompt": ""}, DECODER, "prompt", "non-empty string"),
    ("completions", {"prompt": "a", "max_tokens": "8"}, DECODER, "max_tokens", "must be an integer"),
    ("completions", {"prompt": "a", "max_tokens": True}, DECODER, "max_tokens", "must be an integer"),
    ("completions", {"prompt": "a", "max_tokens": 10**7}, DECODER, "max_tokens", "must be in"),
    ("completions", {"prompt": "a", "temperature": -1}, DECODER, "temperature", "must be in \\[0, 2\\]"),
    ("completions", {"prompt": "a", "top_p": 1.5}, DECODER, "top_p", "must be in \\[0, 1\\]"),
    ("completions", {"prompt": "a", "stream": "yes"}, DECODER, "stream", "true or false"),
    ("completions", {"prompt": "a", "n": 2}, DECODER, "n", "n=2 is not supported"),
    ("completions", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, DECODER, "stop", "5 sequences, more than the 4"),
    ("completions", {"prompt": "a", "stop": 3}, DECODER, "stop", "a string or a list of strings"),
    ("completions", {"prompt": "a", "stop": ["a", 3]}, DECODER, "stop", "a string or a list of strings"),
    ("completions", {"prompt": "a", "stop": [""]}, DECODER, "stop", "empty strings"),
    ("completions", {"prompt": "a", "stream_options": {"include_usage": True}}, DECODER, "stream_options",
     "only allowed with stream"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, DECODER, "logprobs",
     "is not supported"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, DECODER, "top_logprobs",
     "is not supported"),
    ("completions", {"prompt": "a", "logprobs": 5}, DECODER, "logprobs", "is not supported"),
    ("chat", {"messages": "hi"}, DECODER, "messages", "non-empty list"),
    ("chat", {"messages": [{"role": "user"}]}, DECODER, "messages", "messages\\[0\\]"),
])
def test_bad_requests_name_the_field(endpoint, body, served, param, message):
    with pytest.raises(ApiError, match=message) as e:
        parse(endpoint, body, served)
    assert e.value.status == 400 and e.value.param == param
    err = e.value.body()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_response_shapes():
    prism = {"bytes_sent": 10, "seconds": {"total": 0.1}, "partitions": 2}
    body = embeddings_body(ENCODER, [([0.5, 0.25], 3, prism)])
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3} and body["prism"] == prism
    job = parse("chat", {"messages": [{"role": "user", "content": "hi"}]}, DECODER)
    done = completion_body(DECODER, job, "Paris.", 5, 2, "stop", prism)
    assert done["object"] == "chat.completion" and done["choices"][0]["message"]["content"] == "Paris."
    assert done["usage"]["total_tokens"] == 7 and done["id"].startswith("chatcmpl-")
    chunk = chunk_body(DECODER, job, " Par")
    assert chunk["object"] == "chat.completion.chunk" and chunk["choices"][0]["delta"] == {"content": " Par"}
