"""prism-run's jobs as a library: one function per mode, each returning the exit code.

    from prism_ops.jobs.options import RunOptions
    from prism_ops.jobs.run import run_job
    run_job(RunOptions(model="minilm", text="Edge devices share the work.", preset="edge"))

- options.py: what each job is asked (one dataclass per mode over shared bases), checked once.
- base.py: the steps every job on MPI ranks shares, in one order: the settings and rank 0's files
  checked and agreed, the model loaded, the handshake (`start`); the communicator and the fault
  policy around the job (`on_ranks`).
- request.py: one request from the options (the input text, tokens, the length check) and its report.
- run.py (`run_job`), simulate.py (`simulate_job`), profile.py (`profile_job`), auto.py
  (`auto_job`), serve.py (`serve_job`): the modes. `prism_ops.cli.run` parses the flags into
  the options of one mode and imports only that mode's job; only serve.py imports
  `prism_ops.serving`, so the one-shot modes never load an HTTP stack.
"""
