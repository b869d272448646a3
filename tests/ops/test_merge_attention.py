"""merge_attention: two partial attentions over disjoint key sets merge to the whole, exactly."""

import pytest
import torch
import torch.nn.functional as F

from prism_ops import merge_attention, prism_attention


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_local_block_plus_summaries_equals_one_softmax(causal):
    q, k, v = torch.randn(2, 4, 19, 32, dtype=torch.float64), torch.randn(2, 2, 19, 32, dtype=torch.float64), torch.randn(2, 2, 19, 32, dtype=torch.float64)
    ks, vs = torch.randn(2, 2, 6, 32, dtype=torch.float64), torch.randn(2, 2, 6, 32, dtype=torch.float64)
    counts = torch.tensor([[3, 0, 1, 8, 2, 2], [1, 1, 1, 1, 0, 9]])
    whole, whole_lse = prism_attention(q, k, v, ks, vs, counts, causal=causal, return_lse=True)
    local, lse_a = prism_attention(q, k, v, causal=causal, return_lse=True)
    # Summaries alone: an empty local block plus the summary rows.
    empty = k[:, :, :0]
    summ, lse_b = prism_attention(q, empty, empty, ks, vs, counts, return_lse=True)
    out, lse = merge_attention(local, lse_a, summ, lse_b)
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, whole_lse, rtol=0, atol=1e-12)


def test_split_keys_fp32():
    q, k, v = torch.randn(1, 2, 10, 16), torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
    a, la = prism_attention(q, k[:, :, :11], v[:, :, :11], return_lse=True)
    b, lb = prism_attention(q, k[:, :, 11:], v[:, :, 11:], return_lse=True)
    out, _ = merge_attention(a, la, b, lb)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_empty_sides():
    out_a, out_b = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    lse_a = torch.tensor([[[0.5, float("-inf"), float("-inf")]]])
    lse_b = torch.tensor([[[float("-inf"), 1.0, float("-inf")]]])
    out, lse = merge_attention(out_a, lse_a, out_b, lse_b)
    assert not out.isnan().any()
    torch.testing.assert_close(out[..., 0, :], out_a[..., 0, :])
    torch.testing.assert_close(out[..., 1, :], out_b[..., 1, :])
    assert torch.equal(out[..., 2, :], torch.zeros(1, 1, 4))
    assert lse[0, 0, 2] == float("-inf")


def test_bad_input():
    o, l = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="out_b must have the shape of out_a"):
        merge_attention(o, l, torch.randn(1, 2, 4, 4), l)
    with pytest.raises(ValueError, match=r"lse_b must have shape \[B, H, T\] = \[1, 2, 3\]"):
        merge_attention(o, l, o, torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match=r"lse_a must be 3-D"):
        merge_attention(o, o, o, l)


def test_custom_op_opcheck():
    """prism_ops::merge_attention: schema, fake (meta) implementation, autograd registration, AOT."""
    from prism_ops.ops.merge_attention import _merge_attention_op

    out_a, out_b = torch.randn(2, 4, 9, 16, requires_grad=True), torch.randn(2, 4, 9, 16, requires_grad=True)
    lse_a, lse_b = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    lse_b[0, 0, :2] = float("-inf")
    torch.library.opcheck(_merge_attention_op, (out_a, lse_a.requires_grad_(), out_b, lse_b.requires_grad_()))


def test_gradcheck():
    d = dict(dtype=torch.float64, requires_grad=True)
    out_a, out_b = torch.randn(1, 2, 5, 8, **d), torch.randn(1, 2, 5, 8, **d)
    lse_a, lse_b = torch.randn(1, 2, 5, **d), torch.randn(1, 2, 5, **d)
    assert torch.autograd.gradcheck(merge_attention, (out_a, lse_a, out_b, lse_b))
