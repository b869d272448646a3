"""S2M3: split multi-modal, multi-task models into shared modules, place them on devices, and
route requests through them over MPI ranks.

- `modules`: encoder/projector/head wrappers, content hashes, a registry that loads identical
  modules once, and the memory report;
- `suite`: 12 models over 5 tasks built from shared parts (MiniLM real; ViT-B/16, ViT-S/16 and
  Whisper-tiny's encoder from their configs), plus user-defined task DAGs;
- `placement`: the cluster and task-DAG model, the latency objective, greedy and exact placement;
- `place_cli` (prism-place) and `serve` (prism-serve): plan, then serve; a plan may spread a
  transformer encoder over several ranks with PRISM attention.
"""
