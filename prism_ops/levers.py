"""PRISM's settings: the levers beyond plain segment means, their checks, and named presets.

Every lever is off by default; with all of them off the method is the paper's (segment means
with the +ln(count) bias). `resolve` checks a whole setting before any model work starts, so a
typo or a bad value fails in milliseconds with the argument's name.

    sink_tokens     first tokens of the sequence sent exact to every rank
    halo            tokens next to each boundary sent exact to the neighbouring rank
    log_count_bias  the +ln(count) logit correction (False: ablation)
    weights         partition sizes proportional to these (e.g. device speeds)
    cluster_iters   summary rows from key clusters instead of positional segments
    summary_bits    summaries sent as 2/3/4/8-bit integers (per-channel scales)
    exchange        "kv" (K/V means), "hidden" (the paper's hidden-feature means), or "auto"
                    (hidden where the model allows it: no rotary embedding)
"""

from __future__ import annotations

from ._checks import check_int, check_weights
from .ops.quantize_rows import check_bits

DEFAULTS = {
    "sink_tokens": 0,
    "halo": 0,
    "log_count_bias": True,
    "weights": None,
    "cluster_iters": 0,
    "summary_bits": 0,
    "exchange": "kv",
}

EXCHANGE_CHOICES = ("kv", "hidden", "auto")

# Named settings. "paper" is the published method; "edge" is the best combination measured at
# <= 15% of full-exchange traffic on MiniLM and SmolLM2 (docs/EVAL.md, `prism-eval`).
PRESETS = {
    "paper": {},
    "edge": {"segment_size": 1, "summary_bits": 4, "exchange": "auto"},
}


def resolve(num_partitions, segment_size=None, preset=None, **levers) -> dict:
    """One checked settings dict: the preset's values, overridden by explicit arguments."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        base = dict(PRESETS[preset])
        if segment_size is None:
            segment_size = base.pop("segment_size", None)
        base.pop("segment_size", None)
        levers = base | levers
    unknown = sorted(set(levers) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown lever(s) {unknown}; known levers: {sorted(DEFAULTS)}")
    if segment_size is None:
        raise ValueError("segment_size is required (an int >= 1) unless the preset sets it")
    out = DEFAULTS | levers
    check_int(num_partitions, "num_partitions", 1)
    check_int(segment_size, "segment_size", 1)
    check_int(out["sink_tokens"], "sink_tokens", 0)
    check_int(out["halo"], "halo", 0)
    check_int(out["cluster_iters"], "cluster_iters", 0)
    check_bits(out["summary_bits"])
    if not isinstance(out["log_count_bias"], bool):
        raise ValueError(f"log_count_bias must be True or False, got {out['log_count_bias']!r}")
    if out["exchange"] not in EXCHANGE_CHOICES:
        raise ValueError(f"exchange must be one of {EXCHANGE_CHOICES}, got {out['exchange']!r}")
    if out["weights"] is not None:
        check_weights(out["weights"], num_partitions)
    return dict(num_partitions=num_partitions, segment_size=segment_size, **out)
