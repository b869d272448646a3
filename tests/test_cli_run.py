"""prism-run's flags: bad values exit 2 with one line naming the flag, before MPI or any model."""

import pytest

from prism_ops.cli.run import parse_args


@pytest.mark.parametrize("argv,message", [
    (["--threads", "-2"], "--threads must be in [0, 1024]"),
    (["--threads", "100000"], "--threads must be in [0, 1024]"),
    (["--seed", "-1"], "--seed must be in [0, 2**63)"),
    (["--timeout", "0"], "--timeout must be a finite number of seconds > 0"),
    (["--timeout", "-5"], "--timeout must be"),
    (["--timeout", "nan"], "--timeout must be"),
    (["--link-mbit", "0"], "--link-mbit must be a finite rate > 0"),
    (["--link-mbit", "inf"], "--link-mbit must be"),
    (["--link-latency-ms", "-1"], "--link-latency-ms must be >= 0"),
    (["--temperature", "-0.5"], "--temperature must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--generate", "-3"], "--generate must be >= 0"),
    (["--simulate", "0"], "--simulate must be >= 1"),
    (["--weights", "2,x"], "--weights must be finite numbers > 0 separated by commas"),
    (["--weights", "inf,1"], "--weights must be finite numbers > 0"),
    (["--weights", "0,1"], "--weights must be finite numbers > 0"),
    (["--serve", "--port", "0"], "--port must be in [1, 65535]"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--input", "hi", *argv] if "--serve" not in argv else argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_refuses_one_shot_inputs(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--serve", "--input", "hi"])
    assert e.value.code == 2 and "--serve takes its inputs from requests" in capsys.readouterr().err


def test_defaults_give_the_default_preset():
    opts = parse_args(["--input", "hi"])
    config = opts.config_for(4)
    assert (config.segment_size, config.summary_bits, config.exchange) == (1, 4, "auto")  # the edge preset
    assert opts.config_for(2).num_partitions == 2
    assert parse_args(["--input", "hi", "--segment-size", "16"]).config_for(4).segment_size == 16
