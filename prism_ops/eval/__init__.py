"""prism-eval: quality of PRISM on real models at each traffic level, against the exact model.

    prism-eval                      # MiniLM + SmolLM2-135M, the full grid, writes docs/
    python -m prism_ops.eval --tiny # tiny random models, seconds (what CI runs)

Modules: `metrics` (cosine, retrieval, perplexity), `tasks` (models, text and the exact
reference), `grid` (the settings evaluated), `report` (markdown table and plots), `evaluate` (the run); the command line is
`prism_ops.cli.eval`.
"""
