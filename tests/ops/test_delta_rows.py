"""Delta codes (`ops.delta_rows`): rows sent as codebook codes of their change from a prediction
made from the previous layer's decoded rows.

Exact limits (centroids that hold the residuals reproduce the rows; a linear chain is recovered
by the fit), the codes against a brute-force float64 nearest-centroid search, codes wider than
8 bits on the wire, the closed loop of the calibration, and bad input refused by name.
"""

import pytest
import torch

from prism_ops.ops.codebook_rows import MAX_CENTROIDS, codebook_decode, code_dtype
from prism_ops.ops.delta_rows import (delta_codes, delta_decode, delta_geometry, fit_delta_codes, fit_predictor,
                                      id_bytes, load_delta_codes, predicted_rows, save_delta_codes)
from prism_ops.strategy.payload import pack_codes, unpack_codes


def _setup(B=2, S=24, d=16, g=4, K=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, prev = torch.randn(B, S, d, generator=gen), torch.randn(B, S, d, generator=gen)
    predictor = torch.randn(d + 1, d, generator=gen) / d**0.5
    codebook = torch.randn(1, d // g, K, g, generator=gen)
    return x, prev, predictor, codebook


@pytest.mark.parametrize("K", [16, 1024])
def test_codes_are_the_nearest_centroid_of_each_residual_group(K):
    x, prev, predictor, codebook = _setup(K=K)
    codes, decoded = delta_codes(x, prev, predictor, codebook)
    assert codes.shape == (2, 1, 24, 4) and codes.dtype == code_dtype(K)
    # brute force in float64: the residual of each group against every centroid
    pred = prev.double() @ predictor.double()[:-1] + predictor.double()[-1]
    res = (x.double() - pred).view(2, 24, 4, 1, 4)
    dist = ((res - codebook.double()[0][None, None]) ** 2).sum(-1)  # [B, S, M, K]
    best = dist.min(-1).values
    got = dist.gather(-1, codes[:, 0].long()[..., None])[..., 0]
    assert torch.allclose(got, best, rtol=1e-5, atol=1e-6)  # a nearest centroid (ties: either)
    assert torch.allclose(decoded.double(), pred + codebook_decode(codes, codebook, torch.float64)[:, 0], atol=1e-5)
    assert torch.equal(delta_decode(codes, prev, predictor, codebook), decoded)  # the receiver's end


def test_centroids_that_hold_the_residuals_reproduce_the_rows():
    x, prev, predictor, _ = _setup(B=1, S=8)
    res = x - predicted_rows(prev, predictor)  # [1, 8, 16]
    codebook = res[0].view(8, 4, 4).permute(1, 0, 2)[None].contiguous()  # every row's groups are centroids
    codebook = torch.cat([codebook, codebook + 100], 2)  # K = 16, a power of two
    codes, decoded = delta_codes(x, prev, predictor, codebook)
    assert torch.equal(codes[0, 0, :, 0].long(), torch.arange(8))
    assert torch.allclose(decoded, x, atol=1e-6)


def test_fit_predictor_recovers_a_linear_map_and_its_bias():
    gen = torch.Generator().manual_seed(1)
    before = torch.randn(512, 12, generator=gen)
    w, b = torch.randn(12, 12, generator=gen), torch.randn(12, generator=gen)
    fit = fit_predictor(before, before @ w + b, ridge=1e-10)
    assert torch.allclose(fit[:-1], w, atol=1e-4) and torch.allclose(fit[-1], b, atol=1e-4)
    # the ridge shrinks the map, never blows it up on rows that span one direction less
    flat = before - before.mean(1, keepdim=True)  # every row sums to 0, as after a LayerNorm
    assert fit_predictor(flat, flat @ w).abs().max() < 10 * w.abs().max()


def test_the_fit_is_closed_loop_and_keeps_layer_0_out():
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randn(256, 8, generator=gen)]
    for _ in range(3):  # each layer a noisy linear map of the one before
        rows.append(rows[-1] @ torch.randn(8, 8, generator=gen) / 3 + 0.1 * torch.randn(256, 8, generator=gen))
    predictors, books = fit_delta_codes(rows, group=4, centroids=16, iters=5)
    assert len(predictors) == len(books) == 4
    assert torch.equal(predictors[0], torch.zeros(9, 8)) and torch.equal(books[0], books[1])
    # decoding the chain as the readers do stays near the exact rows: the loop corrects itself
    decoded = rows[0][None]
    for layer in range(1, 4):
        decoded = delta_codes(rows[layer][None], decoded, predictors[layer], books[layer])[1]
        err = (decoded - rows[layer][None]).norm() / rows[layer].norm()
        assert err < 0.5


@pytest.mark.parametrize("bits", [9, 10, 12])
def test_codes_wider_than_a_byte_round_trip_the_wire(bits):
    codes = torch.randint(0, 2**bits, (3, 1, 37, 5), generator=torch.Generator().manual_seed(bits)).to(torch.int16)
    data = pack_codes(codes, bits)
    assert data.dtype == torch.uint8 and data.numel() == -(-codes.numel() * bits // 8)
    assert torch.equal(unpack_codes(data, bits, codes.numel()).view(codes.shape), codes)
    assert MAX_CENTROIDS == 2**12


def test_a_calibration_file_round_trips_and_names_its_geometry(tmp_path):
    _, _, predictor, codebook = _setup(K=1024)
    path = tmp_path / "m.delta"
    save_delta_codes(path, [predictor * 0, predictor], [codebook, codebook], 30522, {"architecture": "X"})
    data = load_delta_codes(path)
    assert data["vocab_size"] == 30522 and len(data["predictors"]) == 2
    assert delta_geometry(path) == (4, 10, 2)
    assert id_bytes(2**16) == 2 and id_bytes(2**16 + 1) == 4


def test_bad_input_is_refused_by_name(tmp_path):
    x, prev, predictor, codebook = _setup()
    with pytest.raises(ValueError, match="predictor must be a float"):
        delta_codes(x, prev, predictor[:-1], codebook)
    with pytest.raises(ValueError, match="prev must have the shape of x"):
        delta_codes(x, prev[:, :3], predictor, codebook)
    with pytest.raises(ValueError, match="x must"):
        delta_codes(x[0], prev[0], predictor, codebook)
    with pytest.raises(ValueError, match="delta_codebook='.*nope'.*no readable calibration file"):
        load_delta_codes(tmp_path / "nope")
    torch.save({"format": "prism-codebook/1"}, tmp_path / "other")
    with pytest.raises(ValueError, match="not a prism-delta/1 file"):
        load_delta_codes(tmp_path / "other")
    torch.save({"format": "prism-delta/1", "predictors": [predictor], "codebooks": [codebook]}, tmp_path / "short")
    with pytest.raises(ValueError, match="corrupt calibration file"):
        load_delta_codes(tmp_path / "short")
    (tmp_path / "text").write_text("not torch")
    with pytest.raises(ValueError, match="not a calibration file written by prism-calibrate"):
        load_delta_codes(tmp_path / "text")
