"""The command line, run as a user runs it (a subprocess), on the default model."""

import subprocess
import sys

import pytest


def plait(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "plait.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_commands():
    out = plait("--help")
    assert out.returncode == 0
    for command in ("generate", "chat", "pull", "serve", "bench"):
        assert command in out.stdout


def test_generate_greedy_prints_load_time_and_text():
    out = plait("generate", "The capital of France is", "--max-tokens", "4", "--temperature", "0", "--dtype",
                "float32")
    assert out.returncode == 0, out.stderr
    assert "loaded in" in out.stdout
    assert "The capital of France is" in out.stdout


def test_chat_streams_a_reply():
    proc = subprocess.run([sys.executable, "-m", "plait.cli", "chat", "--max-tokens", "8", "--temperature", "0"],
                          input="Hello\n/exit\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reply = proc.stdout.split("> ", 1)[1]
    assert reply.strip()


def test_pull_finds_the_installed_default():
    out = plait("pull", "smollm2-135m")
    assert out.returncode == 0 and out.stdout.strip().endswith(".gguf")


@pytest.mark.parametrize("args,needle", [
    (["generate", "hi", "--model", "/no/such/model"], "plait pull"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
])
def test_bad_input_is_a_clear_error(args, needle):
    out = plait(*args)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr


def test_config_file_fills_defaults_and_flags_win(tmp_path):
    import json

    from plait.cli import build_parser, engine_kwargs

    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"max_num_seqs": 16, "max_num_batched_tokens": 256, "block_size": 32}))
    args = build_parser().parse_args(["generate", "hi", "--config", str(cfg), "--block-size", "8"])
    kw = engine_kwargs(args)
    assert kw["max_num_seqs"] == 16 and kw["max_num_batched_tokens"] == 256 and kw["block_size"] == 8
    cfg.write_text(json.dumps({"max_num_sequences": 3}))
    with pytest.raises(ValueError, match="unknown engine settings"):
        engine_kwargs(build_parser().parse_args(["generate", "hi", "--config", str(cfg)]))
