"""Triton GPU kernels for prism-ops (installed as `prism_ops.kernels`).

Each file holds one op's `@triton.jit` kernel and its host launcher:
- segment_means.py: segment means and counts in one pass over x.
- prism_attention.py: fused FlashAttention-2-style forward over [local K/V | summary rows].
Importing these modules imports triton; the public API in `prism_ops` does so only on the
Triton path.
"""
