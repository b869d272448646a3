"""The service's request checks and response shapes (prism_ops.serving.openai_api), without MPI."""

import pytest

from prism_ops.serving.openai_api import ApiError, Served, chunk_body, completion_body, embeddings_body, parse

ENCODER = Served("minilm", decoder=False, max_positions=512)
DECODER = Served("smollm2", decoder=True, max_positions=8192)


def test_good_requests():
    job = parse("embeddings", {"model": "minilm", "input": ["a", "b"], "encoding_format": "float"}, ENCODER)
    assert job.texts == ["a", "b"] and job.endpoint == "embeddings"
    job = parse("completions", {"prompt": "hi", "max_tokens": 4, "temperature": 0, "stream": True, "n": 1}, DECODER)
    assert (job.texts, job.max_tokens, job.temperature, job.stream) == (["hi"], 4, 0, True)
    job = parse("chat", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3}, DECODER)
    assert job.chat and job.max_tokens == 3 and job.top_p == 1.0


@pytest.mark.parametrize("endpoint,body,served,param,message", [
    ("embeddings", [1, 2], ENCODER, None, "must be a JSON object"),
    ("embeddings", {"input": "  "}, ENCODER, "input", "must not contain empty strings"),
    ("embeddings", {"input": ["a", 3]}, ENCODER, "input", "list of strings"),
    ("embeddings", {"input": "a", "model": "bert"}, ENCODER, "model", "is not served here"),
    ("embeddings", {"input": "a", "dimensions": 64}, ENCODER, "dimensions", "is not supported"),
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
    ("completions", {"prompt": "a", "stop": ["\n"]}, DECODER, "stop", "is not supported"),
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
