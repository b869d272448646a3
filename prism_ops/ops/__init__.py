"""The public ops, one file each: validation, backend choice and the plain-torch implementation.

The Triton kernels for the same ops live in `prism_ops.kernels` (the repository's kernels/).
"""
