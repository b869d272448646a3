"""delta_rows: hidden-feature rows sent as codes of their change from a prediction (a lever).

A token's attention input changes little from one layer to the next, and a linear map of the
previous layer's row predicts most of it (all-MiniLM-L6-v2: what is left is a tenth to a fifth
of the row's variance). So a rank sends each of its rows as product-quantization codes
(`codebook_rows`) of the residual from that prediction, made from the row its readers decoded
at the previous layer (closed loop: rounding errors never add up, and the sender needs nothing
the readers lack):

    layer 0:  the rows are the embeddings of the tokens: readers embed the token ids themselves
    layer l:  pred = [prev, 1] @ predictor[l]          prev: the decoded rows of layer l - 1
              decoded = pred + codebook_decode(codebook_codes(x - pred))

A layer's rows then cost M * log2(K) bits each (M channel groups, K centroids) and layer 0's the
token ids. Predictors and codebooks are calibrated once per model on shipped text
(`prism_ops.calibrate.fit_delta_codes`, `prism-calibrate --delta-codes`): ridge least squares
from each layer's exact rows to the next, then k-means of the residuals.

Shapes: rows x, prev `[B, S, d]`; predictor `[d + 1, d]` (the last row: the bias); codebook
`[1, M, K, g]` with M * g = d; codes `[B, 1, S, M]`.

A calibration file (`save_delta_codes`, `load_delta_codes`) holds, per attention layer, the
predictor (layer 0's unused) and the residual codebook, the model's vocabulary size (what a
token id costs) and its fingerprint (`prism_ops.hf.model_fingerprint`).
"""

from __future__ import annotations


import torch

from .._checks import check_tensor
from .codebook_rows import (check_codebook, code_bits, codebook_codes, codebook_decode, fit_codebook,
                            read_calibration)

FORMAT = "prism-delta/1"
RIDGE = 1e-2  # the predictor's ridge, relative to the mean diagonal of X^T X: the rows after a
# LayerNorm span one direction less than their width, and an unregularised fit amplifies
# rounding errors along it (a throwaway fit without it gave entries of 1e4 and garbage decodes)


def check_predictor(predictor: torch.Tensor, d: int, name: str = "predictor") -> None:
    check_tensor(predictor, name, "[d + 1, d]", 2)
    if tuple(predictor.shape) != (d + 1, d) or not predictor.is_floating_point():
        raise ValueError(f"{name} must be a float [d + 1, d] = [{d + 1}, {d}] tensor, got {predictor.dtype} "
                         f"{list(predictor.shape)}")


def predicted_rows(prev: torch.Tensor, predictor: torch.Tensor) -> torch.Tensor:
    """What the readers expect of this layer's rows `[B, S, d]` from the decoded rows of the last."""
    w = predictor.to(device=prev.device, dtype=torch.float32)
    return (prev.float() @ w[:-1] + w[-1]).to(prev.dtype)


def delta_codes(x: torch.Tensor, prev: torch.Tensor, predictor: torch.Tensor, codebook: torch.Tensor):
    """(codes `[B, 1, S, M]`, the rows as readers decode them `[B, S, d]`) of rows x `[B, S, d]`."""
    check_tensor(x, "x", "[B, S, d]", 3)
    if prev.shape != x.shape:
        raise ValueError(f"prev must have the shape of x {list(x.shape)}, got {list(prev.shape)}")
    check_predictor(predictor, x.shape[2])
    pred = predicted_rows(prev, predictor)
    codes = codebook_codes((x - pred)[:, None], codebook)
    return codes, pred + codebook_decode(codes, codebook, dtype=x.dtype)[:, 0]


def delta_decode(codes: torch.Tensor, prev: torch.Tensor, predictor: torch.Tensor, codebook: torch.Tensor):
    """The receiver's end: rows `[B, S, d]` from codes `[B, 1, S, M]` and its decoded rows of the last layer."""
    return predicted_rows(prev, predictor) + codebook_decode(codes, codebook, dtype=prev.dtype)[:, 0]


def fit_predictor(before: torch.Tensor, after: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """`[d + 1, d]` ridge least squares from rows `[N, d]` of one layer to the same tokens' rows of the next."""
    X = torch.cat([before.double(), before.new_ones(len(before), 1).double()], 1)
    G = X.T @ X
    G += ridge * G.diagonal().mean() * torch.eye(len(G), dtype=G.dtype)
    return torch.linalg.solve(G, X.T @ after.double()).float()


def fit_delta_codes(rows: list[torch.Tensor], group: int, centroids: int, iters: int = 20, seed: int = 0):
    """(predictors, codebooks) for every layer from its exact attention inputs `[N, d]` (the same N
    tokens in every layer). Layer 0 has no predictor (zeros; its rows travel as token ids) nor codebook
    of its own (a copy of layer 1's keeps the file's shapes uniform).

    Closed loop, as the rows travel: each layer's codebook is fitted on the residuals of predictions
    made from the previous layer's decoded rows, not its exact ones (the predictor itself maps exact
    rows to exact rows)."""
    d = rows[0].shape[1]
    predictors, books = [torch.zeros(d + 1, d)], []
    decoded = rows[0].float()
    for before, after in zip(rows, rows[1:]):
        w = fit_predictor(before, after)
        pred = predicted_rows(decoded, w)
        cb = fit_codebook((after.float() - pred)[None], group, centroids, iters, seed)
        decoded = pred + codebook_decode(codebook_codes((after.float() - pred)[None, None], cb), cb)[0, 0]
        predictors.append(w)
        books.append(cb)
    return predictors, books[:1] + books


def id_bytes(vocab_size: int) -> int:
    """Bytes a token id travels in: 2 for a vocabulary of at most 65,536 tokens, else 4."""
    return 2 if vocab_size <= 2**16 else 4


def save_delta_codes(path, predictors: list, codebooks: list, vocab_size: int, fingerprint: dict) -> None:
    d = predictors[0].shape[1]
    for i, (w, cb) in enumerate(zip(predictors, codebooks)):
        check_predictor(w, d, f"predictors[{i}]")
        check_codebook(cb, f"codebooks[{i}]")
    torch.save({"format": FORMAT, "exchange": "hidden", "vocab_size": int(vocab_size), "fingerprint": dict(fingerprint),
                "predictors": [w.float().contiguous() for w in predictors],
                "codebooks": [cb.float().contiguous() for cb in codebooks]}, path)


def load_delta_codes(path, name: str = "delta_codebook") -> dict:
    """A delta calibration file's contents, checked: {"predictors", "codebooks", "vocab_size",
    "fingerprint"} (`codebook_rows.read_calibration`)."""
    return read_calibration(path, name, FORMAT, "prism-calibrate --delta-codes", _check_delta_codes)


def _check_delta_codes(data: dict, name: str, path: str) -> None:
    preds, books = data.get("predictors"), data.get("codebooks")
    if not isinstance(preds, list) or not isinstance(books, list) or len(preds) < 2 or len(preds) != len(books) \
            or not isinstance(data.get("fingerprint"), dict) or not isinstance(data.get("vocab_size"), int):
        raise ValueError(f"{name}={path!r} is a corrupt calibration file: it needs one predictor and codebook per "
                         "layer (two layers at least), vocab_size and fingerprint")
    try:
        shapes = {check_codebook(cb, f"{name} layer {i}") for i, cb in enumerate(books)}
        d = books[0].shape[1] * books[0].shape[3]
        for i, w in enumerate(preds):
            check_predictor(w, d, f"{name} layer {i} predictor")
    except ValueError as e:
        raise ValueError(f"{name}={path!r} is a corrupt calibration file: {e}") from None
    if len(shapes) != 1 or books[0].shape[0] != 1:
        raise ValueError(f"{name}={path!r} is a corrupt calibration file: codebooks of shapes {sorted(shapes)} "
                         "(one [1, M, K, g] shape for every layer)")


def delta_geometry(path, name: str = "delta_codebook") -> tuple[int, int, int]:
    """(channel groups M, bits per code, bytes per token id) of a delta calibration file: what its rows cost."""
    data = load_delta_codes(path, name)
    cb = data["codebooks"][0]
    return cb.shape[1], code_bits(cb), id_bytes(data["vocab_size"])
