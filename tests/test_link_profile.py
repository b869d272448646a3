"""The --auto choice from a profile (`prism_ops/link_profile.py`, `prism_ops/input_files.py`), without MPI."""

import json

import pytest

from prism_ops.input_files import read_profile
from prism_ops.link_profile import choose


def test_auto_picks_the_faster_mode(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"partitions": 2, "rows": [
        {"tokens": 128, "local_s": 0.1, "distributed_s": 0.2},
        {"tokens": 1024, "local_s": 1.0, "distributed_s": 0.6}]}))
    checked = read_profile(str(prof), "--auto", 2)
    assert choose(checked, 64) == "local"
    assert choose(checked, 2048) == "distributed"
    # Linear in between: the two cross at 307 tokens.
    assert choose(checked, 250) == "local"
    assert choose(checked, 400) == "distributed"
    with pytest.raises(ValueError, match="measured on 2 ranks, this job has 4"):
        read_profile(str(prof), "--auto", 4)
    with pytest.raises(ValueError, match="cannot be read"):
        read_profile(str(tmp_path / "missing.json"), "--auto", 2)
