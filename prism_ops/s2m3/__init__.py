"""S2M3: split multi-modal, multi-task models into shared modules, place them on devices, and
route requests through them over MPI ranks.

- `modules`: encoder/projector/head wrappers, content hashes, a registry that loads identical
  modules once, and the memory report;
- `suite`: 12 models over 5 tasks built from shared parts (MiniLM real; ViT-B/16, ViT-S/16 and
  Whisper-tiny's encoder from their configs), an immutable catalog of them (`BUILTIN`), and
  catalogs with user-defined task DAGs (`Catalog.with_custom`);
- `placement`: the cluster and task-DAG model, the latency objective, greedy placement and
  branch and bound (the exact solver); plain numbers, no I/O;
- `load`: the latency under load (a burst, or steady arrivals): a discrete-event simulation of
  a plan scheduled like `server` (the load-aware objective), and an M/G/1 first guess;
- `solver`: the default planner: the latency objective as a MILP (HiGHS), local search for the
  load-aware objective, and a pick among candidates that include the one-device plans;
- `checks`: reading a file or request lines within size limits, and the field checks whose
  one-line errors name the file, the field, the value and what is allowed;
- `files`: s2m3-place's devices and tasks files, read and checked;
- `profiler`: module costs (memory, compute, output bytes) measured on this machine;
- `planner`: files -> profile -> placement -> the plan s2m3-place prints and writes;
- `plan`: a plan checked against an MPI job, the request lines, and s2m3-serve's inputs read
  and checked in one pass (`read_inputs`);
- `messages`: the wire format between ranks;
- `server`: one rank's scheduler (`Server`) and s2m3-serve's job; a plan may spread a
  transformer encoder over several ranks with PRISM attention.

The command lines are `prism_ops.cli.s2m3_place` (s2m3-place) and `prism_ops.cli.s2m3_serve` (s2m3-serve).
"""
