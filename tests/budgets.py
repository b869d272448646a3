"""Error budgets for floats that come from another process, run or machine (never compared bit
for bit: other math paths sum in other orders).

- fp32 rounding over a model's depth (`fp32_budget`): each layer's longest float32 sum of n terms
  errs by about sqrt(n) * u relative (u = 2**-24; the probabilistic bound of Higham and Mary,
  which holds with high probability for a sum in any order); LayerNorm keeps the scale, so the
  errors add over L layers: L * sqrt(n) * u times the output's largest magnitude, twice over for
  two machines (or processes) that each err by that much.
- quantized summaries: a value on a rounding boundary may round to the other code elsewhere;
  the effect of one code step in every quantized exchange (`flip_one_code`; golden.json's
  `one_step`, measured by tests/golden/capture.py) is added.
"""

import contextlib
import json
import math
from pathlib import Path

import torch

import prism_ops.ops.quantize_rows as quantize_rows

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff
# (layers, longest sum per layer: the MLP's inner width) of the real models the tests run.
DEPTH = {"minilm": (6, 1536), "smollm2": (30, 1536)}

GOLDEN = json.loads((Path(__file__).parent / "golden" / "golden.json").read_text())


def fp32_budget(layers: int, width: int, scale: float) -> float:
    """Largest |difference| between two float32 results of magnitude <= scale after `layers`
    layers whose longest sum has `width` terms, computed along different paths."""
    return 2 * layers * math.sqrt(width) * U32 * scale


def one_step(run: str) -> float:
    """The output change of one code step in every quantized exchange of golden run `run`
    (0 for a run without quantized summaries)."""
    return GOLDEN["prism_run"][run].get("one_step", 0.0)


@contextlib.contextmanager
def flip_one_code():
    """Within: every quantize_codes call moves its code nearest a rounding boundary to the other
    side of it (one step), the flip another machine's last-bit differences can cause."""
    original = quantize_rows.quantize_codes

    def flipped(x, bits, valid=None):
        codes, lo16, step16 = original(x, bits, valid)
        step = step16.float()
        r = (x.float() - lo16.float()) / torch.where(step > 0, step, torch.ones_like(step))
        frac = r - r.floor()
        inside = (r > 0.5) & (r < 2**bits - 1.5)  # both neighbouring codes exist
        if valid is not None:
            inside = inside & valid
        gap = torch.where(inside, (frac - 0.5).abs(), torch.full_like(r, float("inf"))).flatten()
        i = int(gap.argmin())
        if gap[i].isfinite():
            codes = codes.flatten().clone()
            codes[i] = int(r.flatten()[i].floor()) + (0 if frac.flatten()[i] >= 0.5 else 1)
            codes = codes.view(x.shape)
        return codes, lo16, step16

    quantize_rows.quantize_codes = flipped
    try:
        yield
    finally:
        quantize_rows.quantize_codes = original
