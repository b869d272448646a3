"""The service engine (`serving/engine.py`) without MPI or HTTP: 2 ranks as threads on the in-memory
communicator (tests/fake_comm.py), requests parsed as the HTTP side parses them and queued before
the engine runs, so it batches them.

Embeddings queued together run in fewer forwards than requests, and each equals the same text
run alone in one process (`in_process.run_simulated`) within the runtime's fp32 budget
(`launch.assert_matches_simulation`: 1e-5 of the scale per layer). Greedy completions of one
prompt length run as one batch, each row to its own max_tokens, with the ids a single run gives
(up to the first near-tie: a top-2 logit margin within that budget on the logits).
"""

import copy
import queue

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fake_comm import fake_comms, run_ranks  # noqa: E402
from launch import greedy_margins  # noqa: E402

from prism_ops import PrismConfig, hf  # noqa: E402
from prism_ops.in_process import run_simulated  # noqa: E402
from prism_ops.request_types import Request  # noqa: E402
from prism_ops.serving.engine import Engine  # noqa: E402
from prism_ops.serving.openai_api import Served, parse  # noqa: E402


def serve(base, tok, served, bodies, endpoint, ranks=2, config=PrismConfig(2, 1), **engine_kw):
    """Every body queued on rank 0's engine, then the engines run until the queue is empty; the
    (kind, body) each request was answered with, and the engines."""
    comms = fake_comms(ranks)
    engines = [Engine(hf.configure(copy.deepcopy(base), config.replace(num_partitions=ranks), comm=c), tok, c, served,
                      **engine_kw) for c in comms]
    answers = [[] for _ in bodies]
    for i, body in enumerate(bodies):
        job = engines[0].prepare(parse(endpoint, body, served))
        engines[0].submit(job, answers[i].append)
    engines[0].stop_when_idle = True
    run_ranks(comms, lambda c: engines[c.rank].run())
    return answers, engines


def bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                vocab_size=100)).eval()


def test_queued_embeddings_run_batched_and_each_equals_its_text_alone():
    base = bert()
    served = Served("tiny-bert", decoder=False, max_positions=512, width=32, vocab_size=100)
    g = torch.Generator().manual_seed(4)
    texts = [torch.randint(1, 100, (n,), generator=g).tolist() for n in (12, 9, 12, 17, 5)]
    answers, engines = serve(base, None, served, [{"input": [ids]} for ids in texts], "embeddings")
    assert all(len(a) == 1 and a[0][0] == "done" for a in answers), answers
    assert engines[0].forwards < len(texts)  # batched
    model = copy.deepcopy(base)
    hf.configure(model, PrismConfig(2, 1))
    for ids, a in zip(texts, answers):
        got = torch.tensor(a[0][1]["data"][0]["embedding"])
        ref = run_simulated(model, Request(ids=torch.tensor([ids])), 2).output[0].float()
        assert (got - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item()) * 2


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("ranks,lengths", [(2, (12, 9, 12, 17, 5, 30, 3)), (3, (12, 5, 40)), (2, (7, 20))])
def test_short_texts_run_whole_on_one_rank_each_and_equal_the_exact_model(ranks, lengths, packed, monkeypatch):
    """Texts under split_min_tokens are dealt to the ranks whole (two or more: every rank runs its
    own; one: rank 0 alone) and answer as the exact model; longer ones are still split, as alone.
    A rank's whole texts run packed end to end where the model packs (BERT does), else padded."""
    from prism_ops.hf.runner import HFRunner

    calls = []
    if packed:
        real = HFRunner.forward_packed
        monkeypatch.setattr(HFRunner, "forward_packed", lambda self, rows: calls.append(len(rows)) or real(self, rows))
    else:
        monkeypatch.setattr(HFRunner, "packs", property(lambda self: False))
    base = bert()
    served = Served("tiny-bert", decoder=False, max_positions=512, width=32, vocab_size=100)
    g = torch.Generator().manual_seed(5)
    texts = [torch.randint(1, 100, (n,), generator=g).tolist() for n in lengths]
    answers, engines = serve(base, None, served, [{"input": [ids]} for ids in texts], "embeddings", ranks=ranks,
                             split_min_tokens=16)
    assert all(len(a) == 1 and a[0][0] == "done" for a in answers), answers
    prism_model = copy.deepcopy(base)
    hf.configure(prism_model, PrismConfig(ranks, 1))
    for ids, a in zip(texts, answers):
        body = a[0][1]
        got = torch.tensor(body["data"][0]["embedding"])
        whole = len(ids) < 16
        ref = run_simulated(base if whole else prism_model, Request(ids=torch.tensor([ids])), 1 if whole else ranks)
        ref = ref.output[0].float()
        assert (got - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item()) * 2, (len(ids), whole)
        assert body["prism"]["partitions"] == (1 if whole else ranks)
        assert body["prism"].get("whole", False) == whole and (body["prism"]["bytes_sent"] == 0) == whole
    for e in engines:  # every rank's model is back on prism attention
        assert e.runner.model.config._attn_implementation == hf.NAME
    assert sum(calls) == (sum(n < 16 for n in lengths) if packed else 0)  # every whole text packed, or none
    assert engines[0].health()["whole_texts_packed"] == packed


def test_a_text_with_fewer_tokens_than_ranks_is_taken_when_it_runs_whole():
    from prism_ops.serving.openai_api import ApiError

    base = bert()
    served = Served("tiny-bert", decoder=False, max_positions=512, width=32, vocab_size=100)
    answers, _ = serve(base, None, served, [{"input": [[7, 8]]}], "embeddings", ranks=3, split_min_tokens=16)
    got = torch.tensor(answers[0][0][1]["data"][0]["embedding"])
    ref = run_simulated(base, Request(ids=torch.tensor([[7, 8]])), 1).output[0].float()
    assert (got - ref).abs().max().item() <= 2e-5 * max(1.0, ref.abs().max().item())
    comm = fake_comms(3)[0]
    split = Engine(hf.configure(copy.deepcopy(base), PrismConfig(3, 1), comm=comm), None, comm, served)
    with pytest.raises(ApiError, match=r"input has 2 tokens, fewer than the 3 ranks \(each rank needs one\)"):
        split.prepare(parse("embeddings", {"input": [[7, 8]]}, served))


def test_deal_cuts_texts_sorted_into_runs_of_about_equal_tokens():
    from prism_ops.serving.batching import deal

    g = torch.Generator().manual_seed(6)
    for n, P in [(1, 2), (2, 2), (3, 4), (8, 2), (8, 3), (40, 4), (5, 5)]:
        lengths = torch.randint(1, 60, (n,), generator=g).tolist()
        dealt = deal(lengths, P)
        assert len(dealt) == P and sorted(i for d in dealt for i in d) == list(range(n))
        runs = [[lengths[i] for i in d] for d in dealt if d]
        assert len(runs) == min(n, P) and all(d for d in dealt[:min(n, P)])  # no rank idles while texts remain
        assert all(max(a) <= min(b) for a, b in zip(runs, runs[1:]))  # shortest to rank 0, in order
        if n >= P:  # no run over its share by more than one text
            assert max(map(sum, runs)) <= sum(lengths) / P + max(lengths)
    assert deal([100, 1, 1, 1], 2) == [[1, 2, 3], [0]]
    assert deal([5], 3) == [[0], [], []]


def test_greedy_completions_of_one_length_decode_as_one_batch(tmp_path):
    from tiny_model import WORDS, write_tiny_gpt2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = write_tiny_gpt2(tmp_path / "tiny")
    tok, base = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    served = Served("tiny", decoder=True, max_positions=64, vocab_size=len(tok))
    prompt = " ".join(WORDS[:20])
    bodies = [{"prompt": prompt, "max_tokens": n, "temperature": 0} for n in (3, 6)]
    answers, engines = serve(base, tok, served, bodies, "completions")
    assert engines[0].forwards == 1  # one prefill and one decoding for both
    model = copy.deepcopy(base)
    hf.configure(model, PrismConfig(2, 1))
    ids = torch.tensor([tok(prompt)["input_ids"]])
    res, margins, scale = greedy_margins(model, lambda: run_simulated(model, Request(ids=ids, generate=6), 2))
    ref, budget = res.token_ids[0], 1e-5 * max(1.0, scale) * 2
    # The tokens before the first near-tie (top-2 margin within the logit budget) must be the same;
    # from a near-tie on, either token is right and the two runs continue different prefixes.
    sure = next((i for i, m in enumerate(margins) if m <= budget), len(margins))
    for n, a in zip((3, 6), answers):
        kind, body = a[-1]
        text, expected = body["choices"][0]["text"], tok.decode(ref[:min(n, sure)], skip_special_tokens=True)
        assert kind == "done"
        if sure >= n:
            assert text == expected and body["usage"]["completion_tokens"] == n
            assert body["choices"][0]["finish_reason"] == "length"
        else:
            assert text.startswith(expected)


@pytest.mark.parametrize("last_batch,queued,arrivals", [(1, 0, 2), (5, 0, 2), (3, 0, 2), (5, 0, 1000), (3, 4, 1000)])
def test_under_load_a_batch_waits_for_as_many_jobs_as_the_last(last_batch, queued, arrivals, monkeypatch):
    """After a batch of several jobs (load: the clients it answered are sending their next), rank
    0 lingers until the batch holds as many jobs as the last one and stops waiting then (jobs
    already queued still join), or at half the last forward (at most 50 ms) if fewer come; after
    a batch of one (a lone client) it never waits. The engine's clock is a fake one that its
    sleeps advance; `queued` jobs wait behind the first, and a job arrives in each of its first
    `arrivals` sleeps."""
    from types import SimpleNamespace

    from prism_ops.serving import engine as engine_module

    comm = fake_comms(2)[0]
    served = Served("tiny-bert", decoder=False, max_positions=512, width=32, vocab_size=100)
    e = Engine(hf.configure(bert(), PrismConfig(2, 1), comm=comm), None, comm, served)
    e._last_batch, e._last_forward_s = last_batch, 1.0  # the linger's cap: 50 ms
    clock = SimpleNamespace(t=100.0, slept=0)

    def sleep(s):
        clock.t += s
        clock.slept += 1
        if clock.slept <= arrivals:
            e.submit(e.prepare(parse("embeddings", {"input": [[5, 6, 7, clock.slept % 90]]}, served)), lambda _: None)

    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: clock.t, sleep=sleep))
    for k in range(1 + queued):
        e.submit(e.prepare(parse("embeddings", {"input": [[5, 6, 7, 90 + k]]}, served)), lambda _: None)
    batch = e._gather(e._next(timeout=1))
    waited = clock.t - 100.0
    if queued:  # more than the last batch already queued: every one joined, no wait
        assert len(batch) == 1 + queued and clock.slept == 0 and e._last_batch == 1 + queued
    elif last_batch == 1:
        assert len(batch) == 1 and clock.slept == 0 and e._last_batch == 1
    elif arrivals < last_batch - 1:  # fewer came than the last batch held: every one joined, closed at the cap
        assert len(batch) == 1 + arrivals and e._last_batch == 1 + arrivals
        assert 0.05 <= waited < 0.05 + 0.001
    else:  # full: it stopped waiting right after the job that filled it (more were still coming)
        assert len(batch) == last_batch and e._last_batch == last_batch
        assert clock.slept == last_batch - 1 and waited == pytest.approx(0.0005 * (last_batch - 1))


def test_a_spell_without_jobs_ends_the_load(monkeypatch):
    """Rank 0's loop, idle past its 0.1 s poll, takes the load as gone: the next lone request
    does not wait for the last burst's size (at most half a forward) but runs at once."""
    from types import SimpleNamespace

    comm = fake_comms(2)[0]
    served = Served("tiny-bert", decoder=False, max_positions=512, width=32, vocab_size=100)
    e = Engine(hf.configure(bert(), PrismConfig(2, 1), comm=comm), None, comm, served)
    e._last_batch, e._last_forward_s = 16, 1.0
    polls = SimpleNamespace(n=0)

    def next_job(timeout=None):
        polls.n += 1
        if polls.n == 1:
            raise queue.Empty  # an idle poll
        e.stopping.set()
        raise queue.Empty

    from prism_ops.serving import engine as engine_module

    monkeypatch.setattr(e, "_next", next_job)
    monkeypatch.setattr(engine_module, "bcast_json", lambda *a, **k: None)  # the stop order: no rank 1 here
    e.run()
    assert e._last_batch == 1
