"""The summary_codebook lever: product-quantization codes of offline per-layer codebooks.

Exact limits (a codebook holding every row reproduces the rows, so PRISM equals its unrounded
simulation), the wire (codes round trip, bytes == the cost model), the MPI runtime against the
simulation under real mpiexec, and every bad setting refused before any forward, naming it.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from prism_ops import PrismConfig, cost, hf, partition_bounds
from prism_ops.strategy import payload
from prism_ops.ops.codebook_attention import codebook_partitioned_attention
from prism_ops.ops.codebook_rows import (codebook_codes, codebook_decode, codebook_geometry, codebook_rows,
                                         fit_codebook, kmeans, load_codebooks, save_codebooks)
from prism_ops.ops.partitioned_attention import partitioned_attention
from prism_ops.wire import payload_layouts

from launch import MPI_SCRIPTS  # noqa: E402

sys.path.insert(0, str(MPI_SCRIPTS))  # check_run.build: the models the MPI checks run


def all_rows_codebook(x, group):
    """A `[H, M, S, g]` codebook whose centroids are exactly the S rows of x `[1, H, S, C]`."""
    _, H, S, C = x.shape
    return x[0].reshape(H, S, C // group, group).permute(0, 2, 1, 3).contiguous()


def test_a_codebook_of_every_row_reproduces_the_rows():
    x = torch.randn(1, 3, 16, 8)
    cb = all_rows_codebook(x, 2)
    codes = codebook_codes(x, cb)
    assert codes.shape == (1, 3, 16, 4) and codes.dtype == torch.uint8
    assert torch.equal(codes[0, :, :, 0], torch.arange(16).expand(3, 16).to(torch.uint8))
    assert torch.equal(codebook_decode(codes, cb), x)
    assert torch.equal(codebook_rows(x, cb), x)


def test_nearest_centroid_and_invalid_rows_untouched():
    cb = torch.tensor([[[[0.0], [1.0], [10.0], [11.0]]]])  # H=1, M=1, K=4, g=1
    x = torch.tensor([0.25, 0.75, 7.0, 12.0]).view(1, 1, 4, 1)
    assert codebook_rows(x, cb).flatten().tolist() == [0.0, 1.0, 10.0, 11.0]
    valid = torch.tensor([True, False, True, True]).view(1, 1, 4, 1)
    assert codebook_rows(x, cb, valid).flatten().tolist() == [0.0, 0.75, 10.0, 11.0]


def test_kmeans_with_k_equal_n_keeps_every_point_and_finds_separated_clusters():
    pts = torch.randn(2, 8, 3)
    cent = kmeans(pts, 8, iters=5)
    for g in range(2):
        assert sorted(map(tuple, cent[g].tolist())) == sorted(map(tuple, pts[g].tolist()))
    centres = torch.tensor([[-10.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    blobs = (centres[:, None] + 0.1 * torch.randn(4, 50, 2)).reshape(1, 200, 2)
    found = kmeans(blobs, 4, iters=10)[0]
    assert torch.cdist(centres, found).min(1).values.max() < 0.2
    book = fit_codebook(torch.randn(2, 64, 8), group=4, centroids=16, iters=3)
    assert book.shape == (2, 2, 16, 4)


@pytest.mark.parametrize("hidden_mode", [False, True])
@pytest.mark.parametrize("causal,levers", [(False, {}), (True, {"sink_tokens": 2, "halo": 3})])
def test_exact_codebook_equals_the_unrounded_simulation(hidden_mode, causal, levers):
    B, H, Hkv, T, D, d = 1, 4, 2, 16, 8, 12
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    kw = dict(num_partitions=2, segment_size=1, causal=causal, **levers)
    ref = partitioned_attention(q, k, v, **kw)
    if hidden_mode:
        hidden = torch.randn(B, T, d)
        w = (torch.randn(Hkv * D, d), torch.randn(Hkv * D, d))
        cb = all_rows_codebook(hidden[:, None], 3)
        out = codebook_partitioned_attention(q, k, v, cb, hidden=hidden, kv_weight=w, **kw)
    else:
        cb = all_rows_codebook(torch.cat([k, v], -1), 4)
        out = codebook_partitioned_attention(q, k, v, cb, **kw)
    assert torch.equal(out, ref)


def test_a_coarse_codebook_changes_the_output():
    q, k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    cb = fit_codebook(torch.randn(2, 64, 16), group=4, centroids=2, iters=2)
    out = codebook_partitioned_attention(q, k, v, cb, num_partitions=2, segment_size=1)
    assert not torch.allclose(out, partitioned_attention(q, k, v, num_partitions=2, segment_size=1))


def _file(tmp_path, H=2, C=16, group=4, K=16, exchange="kv", fingerprint=None, layers=2, name="cb.pt"):
    books = [fit_codebook(torch.randn(H, 64, C), group, K, iters=2, seed=i) for i in range(layers)]
    path = tmp_path / name
    save_codebooks(path, books, exchange, fingerprint or {"architecture": "test"})
    return str(path), books


@pytest.mark.parametrize("clusters", [False, True])
def test_wire_codes_round_trip_and_bytes_equal_the_cost_model(tmp_path, clusters):
    path, books = _file(tmp_path, H=2, C=16, group=4, K=16)  # 4 codes of 4 bits per head and row
    assert codebook_geometry(path) == (4, 4)
    cfg = PrismConfig(2, 2, summary_codebook=path, sink_tokens=1, cluster_iters=2 if clusters else 0)
    bounds = partition_bounds(21, 2)
    lays = payload_layouts(cfg, bounds, causal=False, batch=1, heads=2, channels=16, dtype=torch.float32)
    lay = lays[0]  # 11 tokens: 1 sink row exact, 10 in 5 segments
    assert (lay.E, lay.S) == (1, 5)
    assert dict(lay.parts())["codes"] == 2 * 5 * 4 * 4 // 8
    means = torch.randn(1, 2, lay.S, 16)
    exact = torch.randn(1, 2, lay.E, 16)
    counts = torch.full((1, lay.S), 2, dtype=torch.int32)
    data = payload.encode(lay, exact, codes=codebook_codes(means, books[0]), counts=counts)
    assert data.numel() == lay.nbytes
    ex, got, cnt = payload.decode(lay, data, books[0])
    assert torch.equal(got, codebook_rows(means, books[0])) and torch.equal(ex, exact)
    shape = cost.ModelShape(hidden_size=24, num_heads=4, num_kv_heads=2, head_dim=8, ffn_size=32)
    assert cost.bytes_per_layer(shape, 21, cfg) == [x.nbytes for x in lays]


def test_bad_settings_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="summary_codebook=.*no readable calibration file"):
        PrismConfig(2, 1, summary_codebook=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a calibration file")
    with pytest.raises(ValueError, match="summary_codebook=.*not a calibration file"):
        PrismConfig(2, 1, summary_codebook=str(junk))
    other = tmp_path / "other.pt"
    torch.save({"format": "prism-codebook/1", "exchange": "kv", "fingerprint": {},
                "codebooks": [torch.zeros(1, 2, 3, 4)]}, other)
    with pytest.raises(ValueError, match=r"summary_codebook=.*corrupt.*power-of-two K.*got K=3"):
        PrismConfig(2, 1, summary_codebook=str(other))
    path, _ = _file(tmp_path)
    with pytest.raises(ValueError, match="summary_codebook and summary_bits=4 both set"):
        PrismConfig(2, 1, summary_codebook=path, summary_bits=4)
    with pytest.raises(ValueError, match="summary_codebook must be the path"):
        PrismConfig(2, 1, summary_codebook=3)
    with pytest.raises(ValueError, match="summary_bits must be 0 .* or one of"):
        PrismConfig(2, 1, summary_bits=5)
    assert load_codebooks(path)["exchange"] == "kv"
    assert PrismConfig(2, 1, summary_codebook=Path(path)).as_dict()["summary_codebook"] == path


def tiny_gpt2():
    from check_run import build

    return build("gpt2")  # the seeded model tests/mpi/check_run.py builds on every rank


def test_a_file_for_another_model_is_refused_before_any_forward(tmp_path):
    pytest.importorskip("transformers")
    model = tiny_gpt2()
    fp = hf.model_fingerprint(model)
    path, _ = _file(tmp_path, H=4, C=32, fingerprint=dict(fp, weights="0" * 16))
    with pytest.raises(ValueError, match=r"summary_codebook=.*calibrated for another model: weights"):
        hf.configure(model, PrismConfig(2, 1, summary_codebook=path))
    hidden, _ = _file(tmp_path, H=1, C=64, exchange="hidden", fingerprint=fp, name="h.pt")
    with pytest.raises(ValueError, match="summary_codebook=.*codes hidden rows but this model exchanges kv"):
        hf.configure(model, PrismConfig(2, 1, summary_codebook=hidden, exchange="kv"))


def test_calibrate_checks_its_arguments():
    pytest.importorskip("transformers")
    from prism_ops import calibrate

    model = tiny_gpt2()
    with pytest.raises(ValueError, match="group must be an int that divides the model's head dim 16, got 3"):
        calibrate.check_geometry(model, "kv", 3, 16)
    with pytest.raises(ValueError, match=r"centroids must be a power of two in \[2, 4096\], got 300"):
        calibrate.check_geometry(model, "kv", 4, 300)
    with pytest.raises(ValueError, match=r"centroids must be a power of two in \[2, 4096\], got 8192"):
        calibrate.check_geometry(model, "kv", 4, 8192)
    assert calibrate.evaluation_text() + calibrate.calibration_text() == calibrate.pydoc_text()


@pytest.mark.parametrize("exchange,levers", [("kv", {}), ("hidden", {"sink_tokens": 2, "halo": 2})])
def test_mpiexec_2_ranks_equal_the_simulation(tmp_path, exchange, levers):
    pytest.importorskip("mpi4py")
    from launch import MPIEXEC, assert_matches_simulation, check_run

    if MPIEXEC is None:
        pytest.skip("needs mpiexec (pip install mpich)")
    model = tiny_gpt2()
    H, C = (4, 32) if exchange == "kv" else (1, 64)
    path, _ = _file(tmp_path, H=H, C=C, group=4, K=16, exchange=exchange, fingerprint=hf.model_fingerprint(model))
    lev = {"summary_codebook": path, "exchange": exchange, **levers}
    r = check_run(2, model="gpt2", tokens=37, segment_size=1, levers=json.loads(json.dumps(lev)))
    assert_matches_simulation(r, 2)
    assert r["err_exact"] > 1e-4  # the codes did change the rows


@pytest.mark.parametrize("exchange,shape", [("kv", [4, 2048, 32]), ("hidden", [1, 2048, 64])])
def test_calibrate_writes_a_file_this_model_accepts(tmp_path, exchange, shape):
    pytest.importorskip("transformers")
    from prism_ops import calibrate
    from prism_ops.eval.tasks import byte_tokenizer
    from prism_ops.request_types import Request
    from prism_ops.in_process import run_simulated

    model = tiny_gpt2()
    rows = calibrate.calibration_rows(model, byte_tokenizer, exchange)
    assert [list(r.shape) for r in rows] == [shape, shape]
    if exchange == "kv":  # GPT-2 has no rotary embedding: the recorded K|V is the projection of its input
        h = model.transformer.h[0]
        x = h.ln_1(model.transformer.wte(torch.tensor([list(calibrate.calibration_text().encode()[:256])]))
                   + model.transformer.wpe(torch.arange(256)))
        kv = h.attn.c_attn(x)[0, :, 64:].view(256, 2, 4, 16)  # [T, k|v, head, D]
        want = torch.cat([kv[:, 0], kv[:, 1]], -1).transpose(0, 1)  # [head, T, 2D]
        torch.testing.assert_close(rows[0][:, :256], want, rtol=1e-5, atol=1e-5)
    out = tmp_path / "tiny.codebook"
    info = calibrate.calibrate(model, byte_tokenizer, out, group=4, centroids=16, exchange=exchange, iters=3,
                               rows=rows)
    assert info["exchange"] == exchange and info["layers"] == 2
    hf.configure(model, PrismConfig(2, 1, summary_codebook=str(out), exchange=exchange))
    ids = torch.tensor([list(calibrate.evaluation_text().encode()[:64])])
    got = run_simulated(model, Request(ids=ids, output="hidden"), 2).output
    model.set_attn_implementation("sdpa")
    exact = run_simulated(model, Request(ids=ids, output="hidden"), 1).output
    cos = torch.nn.functional.cosine_similarity(got.flatten(0, 1), exact.flatten(0, 1), dim=-1)
    assert 0.9 < cos.min() and not torch.equal(got, exact)


def test_prism_calibrate_bad_arguments_exit_2(capsys):
    from prism_ops.cli.calibrate import main

    with pytest.raises(SystemExit) as e:
        main(["--out", "x.codebook", "--iters", "-1"])
    assert e.value.code == 2 and "--iters must be >= 0, got -1" in capsys.readouterr().err


def test_the_handshake_compares_the_codebook_files_bytes(tmp_path):
    pytest.importorskip("transformers")
    from prism_ops.distributed.handshake import fingerprint

    model = tiny_gpt2()
    path, _ = _file(tmp_path, H=4, C=32, fingerprint=hf.model_fingerprint(model))
    cfg = PrismConfig(2, 1, summary_codebook=path)
    runner = hf.HFRunner(model, cfg)
    first = fingerprint(runner, model_name="gpt2", dtype="float32")["summary_codebook_digest"]
    _file(tmp_path, H=4, C=32, fingerprint={"other": 1})  # another file at the same path
    assert fingerprint(runner, model_name="gpt2", dtype="float32")["summary_codebook_digest"] != first


def test_the_model_fingerprint_is_stable_and_sees_other_weights():
    pytest.importorskip("transformers")
    a, b = tiny_gpt2(), tiny_gpt2()
    torch.set_num_threads(2)
    fa = hf.model_fingerprint(a)
    torch.set_num_threads(1)
    assert hf.model_fingerprint(b) == fa  # no arithmetic on the weights: any thread count
    with torch.no_grad():
        b.transformer.h[0].attn.c_attn.weight[0, 0] += 1  # a sampled value
    assert hf.model_fingerprint(b)["weights"] != fa["weights"]
