"""S2M3: split multi-modal, multi-task models into shared modules and place them on devices.

Work in progress (issue 5):
- `modules`: encoder/projector/head wrappers, content hashes, a registry that loads identical
  modules once, and the memory report;
- `suite`: 10 models over 4 tasks built from shared parts (MiniLM real; ViT-B/16, ViT-S/16 and
  Whisper-tiny's encoder from their configs);
- `placement`: the cluster and task-DAG model, the latency objective, greedy and exact placement.
Not yet: the MPI server that routes requests, prism-place / prism-serve.
"""
