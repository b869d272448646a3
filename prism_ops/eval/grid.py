"""The settings prism-eval runs: the paper's grid, one curve per lever, the presets, ablations.

A Setting is one row: a method (one curve in the plots), P, segment size and the levers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import PRESETS, PrismConfig

# One curve per lever, each on top of the paper's method, swept over segment sizes at P = 4.
LEVER_CURVES = {
    "+ sinks 4": {"sink_tokens": 4},
    "+ sinks 4, halo 4": {"sink_tokens": 4, "halo": 4},
    "+ key clusters": {"cluster_iters": 6},
    "+ uneven sizes 4:3:2:1": {"weights": (4, 3, 2, 1)},
    "+ hidden exchange": {"exchange": "hidden"},
    "+ 4-bit summaries": {"summary_bits": 4},
    "+ 4-bit, hidden exchange": {"summary_bits": 4, "exchange": "hidden"},
}
CURVE_PARTITIONS = 4


@dataclass(frozen=True)
class Setting:
    method: str
    num_partitions: int
    segment_size: int
    levers: dict = field(default_factory=dict, hash=False)

    def config(self) -> PrismConfig:
        """The setting as a checked PrismConfig (raises ValueError naming the bad argument)."""
        return PrismConfig.from_preset(self.num_partitions, None, self.segment_size, **self.levers)

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.levers.items())) or "-"


def needs_hidden(s: Setting) -> bool:
    return s.levers.get("exchange") == "hidden"


def build(partitions, segment_sizes, curves=True, presets=True) -> list[Setting]:
    rows = []
    for P in partitions:
        for segment_size in segment_sizes:
            rows.append(Setting("paper", P, segment_size))
            if segment_size > 1:  # with one token per row the count is 1 and the bias is 0
                rows.append(Setting("paper, no ln-count bias", P, segment_size, {"log_count_bias": False}))
    if curves:
        for name, levers in LEVER_CURVES.items():
            for segment_size in segment_sizes:
                rows.append(Setting(name, CURVE_PARTITIONS, segment_size, dict(levers)))
    if presets:
        for name, preset in PRESETS.items():
            # tuned's dense layers are a model's calibration, which the grid does not run
            # (bench/bench_lean.py measures tuned).
            if name == "paper" or preset.get("dense_layers") == "auto":
                continue
            levers = {k: v for k, v in preset.items() if k != "segment_size"}
            for P in partitions:
                rows.append(Setting(f"preset {name}", P, preset["segment_size"], levers))
            # Ablation: the preset at P = 4 with each of its levers back at the default.
            for k in levers:
                rest = {x: y for x, y in levers.items() if x != k}
                rows.append(Setting(f"preset {name} without {k}", CURVE_PARTITIONS, preset["segment_size"], rest))
    return rows


def check_all(rows: list[Setting], tokens: int) -> None:
    """Every setting valid for sequences of `tokens` tokens, before any model work."""
    for s in rows:
        s.config()
        if s.num_partitions > tokens:
            raise ValueError(f"num_partitions={s.num_partitions} is more than the {tokens} tokens per sequence")
