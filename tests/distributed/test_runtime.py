"""The MPI runtime (`distributed/runtime.py`) without MPI: scatter, gather and the token stream over
2 and 3 ranks running as threads on an in-memory communicator (tests/fake_comm.py).

Each case runs `run_distributed` on every rank and compares rank 0's Result with the same request
simulated in one process (`in_process.run_simulated`). Both do the same float32 operations on the
same rows up to the order of some sums, so they agree within `launch.assert_matches_simulation`'s
budget (1e-5 of the output's scale per layer); generated ids are equal where the simulated top-2
logit margin exceeds that budget on the logits; the bytes the ranks counted equal the cost model's.
"""

import copy
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fake_comm import fake_comms, run_ranks  # noqa: E402
from launch import assert_greedy_ids_agree, greedy_margins  # noqa: E402

from prism_ops import PrismConfig, cost, hf, partition_bounds  # noqa: E402
from prism_ops.distributed.runtime import run_distributed  # noqa: E402
from prism_ops.in_process import run_simulated  # noqa: E402
from prism_ops.request_types import Request, RequestError  # noqa: E402
from prism_ops.tags import TAG_TOKEN, TAG_TOKEN_STOP  # noqa: E402


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=100,
                                      bos_token_id=0, eos_token_id=99)).eval()


def bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                vocab_size=100)).eval()


def distributed(base, config, req, ranks, **kw):
    """run_distributed on `ranks` threads (each rank its own copy of the model); rank 0's Result and the comms."""
    comms = fake_comms(ranks)
    runners = [hf.configure(copy.deepcopy(base), config.replace(num_partitions=ranks), comm=c) for c in comms]
    results = run_ranks(comms, lambda c: run_distributed(runners[c.rank], c, req if c.rank == 0 else None,
                                                         progress=False, **kw))
    assert all(r is None for r in results[1:])
    return results[0], comms


def simulated(base, config, req, ranks):
    model = copy.deepcopy(base)
    hf.configure(model, config.replace(num_partitions=ranks))
    return run_simulated(model, req, ranks)


def assert_ids_as_simulated(got, base, config, req, ranks, layers=2):
    """Greedy ids against the simulation's, within the logit budget (`launch.assert_greedy_ids_agree`:
    1e-5 of the logits' scale per layer; at a near-tie either token is right)."""
    model = copy.deepcopy(base)
    hf.configure(model, config.replace(num_partitions=ranks))
    ref, margins, scale = greedy_margins(model, lambda: run_simulated(model, req, ranks))
    assert len(got[0]) == len(ref.token_ids[0])
    assert_greedy_ids_agree(got, ref.token_ids, margins, 1e-5 * max(1.0, scale) * layers)


def assert_close(got, ref, layers):
    scale = ref.abs().max().item()
    assert (got - ref).abs().max().item() <= 1e-5 * max(1.0, scale) * layers


def gpt2_both_ways(req, ranks, config=PrismConfig(2, 4, sink_tokens=2)):
    """req through gpt2() on `ranks` threads and simulated: (rank 0's Result, the comms, the simulation's)."""
    base = gpt2()
    res, comms = distributed(base, config, req, ranks)
    return res, comms, simulated(base, config, req, ranks)


@pytest.mark.parametrize("ranks", [2, 3])
def test_hidden_states_are_scattered_and_gathered_as_one_process_computes_them(ranks):
    config = PrismConfig(2, 4, sink_tokens=2)
    req = Request(ids=torch.randint(0, 100, (1, 37), generator=torch.Generator().manual_seed(1)), output="hidden")
    res, _, ref = gpt2_both_ways(req, ranks, config)
    assert res.output.shape == (1, 37, 32)
    assert_close(res.output, ref.output, 2)
    assert res.bounds == [tuple(b) for b in partition_bounds(37, ranks)]
    shape = cost.ModelShape.from_config(gpt2().config)
    per_rank = cost.bytes_per_layer(shape, 37, config.replace(num_partitions=ranks), causal=True)
    assert res.bytes_per_layer == [sum(per_rank)] * 2 == ref.bytes_per_layer


@pytest.mark.parametrize("ranks", [2, 3])
def test_logits_cross_the_link_as_the_last_hidden_row_and_rank_0_applies_the_head(ranks):
    req = Request(ids=torch.randint(0, 100, (2, 29), generator=torch.Generator().manual_seed(4)), output="logits")
    res, comms, ref = gpt2_both_ways(req, ranks)
    assert res.output.shape == (2, 100) and res.output.dtype == torch.float32
    assert_close(res.output, ref.output, 2)
    # The last rank sent 2 rows of d = 32 floats (and its 2 layers' byte counts), not 2 x V = 100 logits.
    assert comms[-1].sent["result"] == 4 * 32 * 2 + 8 * 2
    assert all(c.sent["result"] == 8 * 2 for c in comms[1:-1])


def test_a_padded_batch_is_pooled_from_each_ranks_partial_sums():
    base, config = bert(), PrismConfig(2, 1, summary_bits=4)
    ids = torch.randint(1, 100, (2, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 13:] = 0  # the second text is 13 tokens: rank 1's slice is mostly padding
    req = Request(ids=ids, mask=mask, output="embedding")
    res, _ = distributed(base, config, req, 2)
    ref = simulated(base, config, req, 2)
    assert res.output.shape == (2, 32)
    assert_close(res.output, ref.output, 2)


def test_generated_tokens_stream_to_rank_0_as_they_are_made():
    base, config = gpt2(), PrismConfig(2, 1)
    prompt = torch.randint(0, 99, (1, 24), generator=torch.Generator().manual_seed(3))
    req = Request(ids=prompt, generate=6, stream=True)
    seen = []
    res, comms = distributed(base, config, req, 2, on_token=lambda ids: seen.append(int(ids[0])) and False)
    assert len(res.token_ids[0]) == 6
    assert_ids_as_simulated(res.token_ids, base, config, Request(ids=prompt, generate=6), 2)
    assert seen == res.token_ids[0]  # every token reached rank 0's on_token, in order, once
    assert not any(comms[0].hub.mail.values())  # no message left for the next request


class SlowDecoding:
    """A runner whose decoding waits `pause_s` before handing on each token (a slow device), so rank
    0's stop reaches the last rank long before it could make all its tokens."""

    def __init__(self, runner, pause_s):
        self.runner, self.pause_s = runner, pause_s

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def decode(self, h_last, cache, first_position, sampling, eos, progress, on_token=None):
        def slow(ids):
            time.sleep(self.pause_s)
            return on_token(ids)

        return self.runner.decode(h_last, cache, first_position, sampling, eos, progress, slow if on_token else None)


def test_rank_0_stops_the_stream_and_the_next_request_runs_whole():
    base, config = gpt2(), PrismConfig(2, 1)
    prompt = torch.randint(0, 99, (1, 24), generator=torch.Generator().manual_seed(3))
    comms = fake_comms(2)
    runners = [hf.configure(copy.deepcopy(base), config, comm=c) for c in comms]
    runners[1] = SlowDecoding(runners[1], 0.2)
    seen = []

    def two_requests(c):
        stop = dict(on_token=lambda ids: seen.append(int(ids[0])) or len(seen) == 2)
        first = run_distributed(runners[c.rank], c, Request(ids=prompt, generate=20, stream=True) if c.rank == 0
                                else None, progress=False, **stop)
        second = run_distributed(runners[c.rank], c, Request(ids=prompt, generate=6) if c.rank == 0 else None,
                                 progress=False)
        return first, second

    (first, second), _ = run_ranks(comms, two_requests)
    # The last rank stops at the first token it makes after rank 0's stop arrives: well before 20.
    assert 2 <= len(first.token_ids[0]) < 20 and first.token_ids[0][:2] == seen[:2] and len(seen) == 2
    # The next request runs whole: the stop message was taken by the first one.
    assert_ids_as_simulated(second.token_ids, base, config, Request(ids=prompt, generate=6), 2)
    assert not comms[0].hub.mail[(1, TAG_TOKEN_STOP)] and not comms[0].hub.mail[(0, TAG_TOKEN)]


@pytest.mark.parametrize("ids,message", [
    (torch.empty(1, 0, dtype=torch.long), "the input is empty"),
    (torch.zeros(1, 1, dtype=torch.long), "fewer than the 2 ranks"),
    (torch.zeros(1, 200, dtype=torch.long), "more than the model's 128 positions"),
])
def test_a_bad_request_raises_the_same_error_on_every_rank(ids, message):
    base = gpt2()
    comms = fake_comms(2)
    runners = [hf.configure(copy.deepcopy(base), PrismConfig(2, 1), comm=c) for c in comms]
    errors = []

    def one(c):
        try:
            run_distributed(runners[c.rank], c, Request(ids=ids) if c.rank == 0 else None, progress=False)
        except RequestError as e:
            errors.append((c.rank, str(e)))

    run_ranks(comms, one)
    assert sorted(r for r, _ in errors) == [0, 1] and all(message in m for _, m in errors), errors


def test_a_runner_configured_for_another_comm_is_refused():
    base = gpt2()
    comms = fake_comms(2)
    runner = hf.configure(copy.deepcopy(base), PrismConfig(2, 1))  # simulated: no comm
    with pytest.raises(ValueError, match="needs the runner that prism_ops.hf.configure"):
        run_distributed(runner, comms[0], Request(ids=torch.zeros(1, 8, dtype=torch.long)), progress=False)


def test_every_ranks_time_is_broken_down_by_phase():
    """Result.seconds_per_rank: each rank's scatter, forward (with its attention layers' payload,
    local block, wait and remote rows inside it), gather and total; Result.seconds the slowest's."""
    base, config = gpt2(), PrismConfig(2, 4)
    req = Request(ids=torch.randint(0, 100, (1, 40), generator=torch.Generator().manual_seed(5)), output="hidden")
    res, _ = distributed(base, config, req, 3)
    assert len(res.seconds_per_rank) == 3
    for t in res.seconds_per_rank:
        parts = [t[f"attention {k}"] for k in ("payload", "local", "wait", "remote")]
        assert all(x >= 0 for x in parts)
        assert sum(parts) <= t["forward"] + 1e-6 <= t["total"] + 1e-6
    assert set(res.seconds) == {"scatter", "forward", "gather", "total"}
    assert res.seconds["total"] == max(t["total"] for t in res.seconds_per_rank)
