"""CPU: torch prism_attention against SDPA given the same total number of keys.

PRISM attention on a rank with T_local tokens and 4 ranks at segment_size 16 attends to
T_local local keys plus 3 * T_local / 16 summary rows (with the +ln(count) bias; causal adds the
local mask). The baseline is plain SDPA over the same number of keys, no mask. Target: at most
1.15x SDPA's time.

    .venv-test/bin/python -m pytest bench/bench_prism_attention.py
"""

import pytest
import torch
import torch.nn.functional as F

from prism_ops import prism_attention, segment_means

H, D, RANKS, SEGMENT = 4, 64, 4, 16


def inputs(T_local):
    torch.manual_seed(0)
    q = torch.randn(1, H, T_local, D)
    k, v = torch.randn(1, H, T_local, D), torch.randn(1, H, T_local, D)
    other = torch.randn(1, H, (RANKS - 1) * T_local, D)  # the other ranks' keys (and values)
    k_sum, counts = segment_means(other, SEGMENT)
    v_sum, _ = segment_means(other.flip(2), SEGMENT)
    return q, k, v, k_sum, v_sum, counts


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("T_local", [1024, 2048, 4096])
def test_prism_attention_vs_sdpa(compare, T_local, causal):
    q, k, v, k_sum, v_sum, counts = inputs(T_local)
    keys, vals = torch.cat([k, k_sum], 2), torch.cat([v, v_sum], 2)
    case = f"T_local={T_local} keys={keys.shape[2]} {'causal' if causal else 'full'}"
    compare(
        case,
        lambda: F.scaled_dot_product_attention(q, keys, vals),
        lambda: prism_attention(q, k, v, k_sum, v_sum, counts, causal=causal, backend="torch"),
    )


@pytest.mark.parametrize("T_local", [1024, 2048, 4096])
def test_count_bias_cost_in_sdpa(compare, T_local):
    """What the per-key +ln(count) bias alone costs SDPA: the floor under the non-causal ratio."""
    q, k, v, k_sum, v_sum, counts = inputs(T_local)
    keys, vals = torch.cat([k, k_sum], 2), torch.cat([v, v_sum], 2)
    bias = torch.zeros(1, 1, 1, keys.shape[2])
    bias[..., T_local:] = torch.log(counts.float())
    compare(
        f"sdpa+bias T_local={T_local} keys={keys.shape[2]}",
        lambda: F.scaled_dot_product_attention(q, keys, vals),
        lambda: F.scaled_dot_product_attention(q, keys, vals, attn_mask=bias),
    )
