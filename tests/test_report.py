"""The human report (`prism_ops/report.py`): --verbose's table of every rank's seconds per phase."""

import io

from prism_ops.report import print_seconds_per_rank


def test_the_per_rank_table_has_a_row_per_rank_and_a_column_per_phase_measured():
    every = [{"scatter": 0.01, "forward": 1.5, "attention payload": 0.1, "attention local": 0.4,
              "attention wait": 0.0, "attention remote": 0.2, "gather": 0.02, "total": 1.6},
             {"scatter": 0.01, "forward": 1.7, "attention payload": 0.0, "attention local": 0.5,
              "attention wait": 0.3, "attention remote": 0.3, "decode": 0.9, "gather": 0.0, "total": 2.7}]
    out = io.StringIO()
    print_seconds_per_rank(every, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:10] == ["rank", "scatter", "forward", "payload", "local", "wait", "remote", "decode",
                                     "gather", "total"]
    assert lines[1].split() == ["0", "0.010", "1.500", "0.100", "0.400", "0.000", "0.200", "0.000", "0.020", "1.600"]
    assert lines[2].split()[0] == "1" and lines[2].split()[7] == "0.900" and len(lines) == 3
