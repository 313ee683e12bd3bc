"""The `meshllm` command line, run as a user runs it."""
import os
import subprocess
import sys

import pytest

ENV = dict(os.environ, PYTHONIOENCODING="utf-8")


def meshllm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_generate_prints_only_the_greedy_continuation(hf_reference):
    out = meshllm("generate", "--temperature", "0", "--max-tokens", "48", "The capital of France is")
    assert out.returncode == 0, out.stderr
    assert out.stdout == hf_reference["raw"][0]["greedy_text"].replace("<|im_end|>", "")


def test_generate_chat_uses_the_template_and_stops_at_end_of_turn(hf_reference):
    out = meshllm("generate", "--chat", "--temperature", "0", "What is the capital of France?")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "The capital of France is Paris."


def test_generate_with_a_seed_is_reproducible():
    args = ("generate", "--temperature", "1.0", "--seed", "11", "--max-tokens", "16", "Once upon a time")
    first = meshllm(*args)
    assert first.returncode == 0 and first.stdout
    assert meshllm(*args).stdout == first.stdout


@pytest.mark.parametrize("args,message", [
    (("--temperature", "-1"), "temperature must be >= 0"),
    (("--max-tokens", "0"), "max_new_tokens must be >= 1"),
    (("--model", "/nonexistent.gguf"), "cannot open model file"),
])
def test_bad_arguments_exit_2_with_a_message(args, message):
    out = meshllm("generate", *args, "hi")
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_interactive_chat_answers_and_exits_on_eof():
    proc = subprocess.run([sys.executable, "-m", "services.cli", "chat", "--temperature", "0"],
                          input="What is the capital of France?\n", capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "The capital of France is Paris." in proc.stdout
