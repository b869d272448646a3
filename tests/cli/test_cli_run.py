"""prism-run's flags: bad values exit 2 with one line naming the flag, before MPI or any model;
each mode gets its own options and loads only its own job."""

import ast
import os
import subprocess
import sys

import pytest

from prism_ops.cli.run import parse_args
from prism_ops.distributed.link import EmulatedLink
from prism_ops.jobs.options import AutoOptions, ProfileOptions, RunOptions, ServeOptions, SimulateOptions


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
    (["--serve", "--split-min-tokens", "-1"], "--split-min-tokens must be >= 0 (0: split every text over the ranks)"),
    (["--profile", "p.json", "--auto", "q.json"], "--profile OUT measures a profile and --auto PROFILE runs by one"),
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


@pytest.mark.parametrize("argv,kind", [
    (["--input", "hi"], RunOptions),
    (["--input", "hi", "--simulate", "2"], SimulateOptions),
    (["--input", "hi", "--auto", "p.json"], AutoOptions),
    (["--profile", "p.json"], ProfileOptions),
    (["--serve"], ServeOptions),
])
def test_each_mode_gets_its_own_options(argv, kind):
    opts = parse_args(argv)
    assert type(opts) is kind and opts.mode == {RunOptions: "run", SimulateOptions: "simulate", AutoOptions: "auto",
                                                ProfileOptions: "profile", ServeOptions: "serve"}[kind]


def test_the_options_check_their_values_as_the_command_line_does():
    """One check per value (`jobs.options.check_values`, `distributed.link.check_link`): library
    users get the command line's message, naming the field instead of the flag."""
    with pytest.raises(ValueError, match=r"^top_k must be >= 0 \(0: off\), got -1$"):
        RunOptions(text="hi", top_k=-1)
    with pytest.raises(ValueError, match=r"^generate must be >= 0, got -3$"):
        SimulateOptions(text="hi", simulate=2, generate=-3)
    with pytest.raises(ValueError, match=r"^link_mbit must be a finite rate > 0 in Mbit/s, got inf$"):
        ProfileOptions(profile="p.json", link_mbit=float("inf"))
    with pytest.raises(ValueError, match=r"^link_latency_ms must be >= 0, got -1$"):
        EmulatedLink(10.0, -1)
    with pytest.raises(ValueError, match=r"^port must be in \[1, 65535\], got 0$"):
        ServeOptions(port=0)
    with pytest.raises(ValueError, match=r"^split_min_tokens must be >= 0 \(0: split every text over the ranks\), got -2$"):
        ServeOptions(split_min_tokens=-2)


def test_the_service_runs_short_texts_whole_by_default():
    assert parse_args(["--serve"]).split_min_tokens == 128
    assert parse_args(["--serve", "--split-min-tokens", "0"]).split_min_tokens == 0


def test_a_one_shot_job_imports_only_its_own_mode(tmp_path):
    """prism-run --simulate loads its own job and nothing of the other modes or of the service."""
    pytest.importorskip("transformers")
    from tiny_model import TEXT, write_tiny_gpt2

    folder = write_tiny_gpt2(tmp_path / "gpt2")
    code = ("import sys\n"
            "from prism_ops.cli.run import parse_args, run_mode\n"
            f"code = run_mode(parse_args(['--simulate', '2', '--model', {str(folder)!r}, '--input', {TEXT!r}]))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('prism_ops.jobs', 'prism_ops.serving'))))\n"
            "sys.exit(code)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert ast.literal_eval(p.stdout.strip().splitlines()[-1]) == [
        "prism_ops.jobs", "prism_ops.jobs.options", "prism_ops.jobs.request", "prism_ops.jobs.simulate"]
