"""deploy/k8s, the kustomize base, checked the way this machine can: no cluster runs here, so the base is
assembled (by kustomize or kubectl when on PATH, and always by a small assembler for what this base
uses), every object is validated against the Kubernetes OpenAPI schemas kubernetes-validate bundles,
and the workloads are compared with docker-compose.yml, which tests/test_compose.py keeps in step with
the code: the same images, commands, ports, variables and health checks."""
import copy
import functools
import inspect
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from test_compose import COMPOSE, OURS, PASSWORD_VARIABLE, compose_expand, known_env_names

from services.cli import build_parser
from services.common import config as config_module
from services.common.metrics import METRICS
from services.worker.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
EXTERNAL_REDIS = K8S / "components" / "external-redis"
API_KEYS_EXAMPLE = K8S / "api-keys-secret.example.yaml"
NAMESPACE = "meshllm"
PART_OF = {"app.kubernetes.io/part-of": "meshllm"}
WORKLOADS = ("Deployment", "StatefulSet")
# variables the pods set that compose leaves to the machine: thread counts matched to the CPU limits
K8S_ONLY_ENV = {"MESHLLM_THREADS", "NUMBA_NUM_THREADS"}
USES_REDIS = {"generation", "retrieval", "worker"}          # tokenizer and the gateway never connect


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# ---------------------------------------------------------------------------- assembly

def merge_patch(target: dict, patch: dict) -> None:
    """A strategic-merge patch as this base's components write them: maps merge, null deletes."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def apply_patches(objects: list[dict], patches: list[dict]) -> list[dict]:
    for entry in patches:
        assert set(entry) == {"patch"}, f"the assembler knows inline patches only: {entry}"
        patch = yaml.safe_load(entry["patch"])
        key = (patch["kind"], patch["metadata"]["name"])
        matches = [o for o in objects if (o["kind"], o["metadata"]["name"]) == key]
        assert len(matches) == 1, f"patch target {key} matches {len(matches)} objects"
        if patch.pop("$patch", None) == "delete":
            objects.remove(matches[0])
        else:
            merge_patch(matches[0], {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")})
    return objects


def transform(objects: list[dict], kustomization: dict) -> list[dict]:
    """namespace, labels (with selectors and templates) and images, as kustomize applies them."""
    for obj in objects:
        meta = obj["metadata"]
        if "namespace" in kustomization and obj["kind"] != "Namespace":
            meta["namespace"] = kustomization["namespace"]
        spec = obj.get("spec", {})
        for group in kustomization.get("labels", []):
            pairs = group["pairs"]
            meta.setdefault("labels", {}).update(pairs)
            if group.get("includeSelectors"):
                if obj["kind"] == "Service":
                    spec.setdefault("selector", {}).update(pairs)
                elif obj["kind"] in WORKLOADS:
                    spec["selector"]["matchLabels"].update(pairs)
            if group.get("includeTemplates") and obj["kind"] in WORKLOADS:
                spec["template"]["metadata"].setdefault("labels", {}).update(pairs)
                for claim in spec.get("volumeClaimTemplates", []):
                    claim["metadata"].setdefault("labels", {}).update(pairs)
        for c in spec.get("template", {}).get("spec", {}).get("containers", []):
            name, _, tag = c["image"].partition(":")
            for image in kustomization.get("images", []):
                if image["name"] == name:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return objects


def assemble(root: Path = K8S, components: tuple[Path, ...] = ()) -> list[dict]:
    """What `kustomize build` makes of this base, plus components, for the features they use."""
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    objects = []
    for entry in kustomization["resources"]:
        path = root / entry
        assert path.is_file(), f"kustomization.yaml lists {entry}, which is not a file"
        objects += load_all(path)
    objects = transform(objects, kustomization)
    for component in components:
        spec = yaml.safe_load((component / "kustomization.yaml").read_text())
        assert spec["kind"] == "Component" and set(spec) <= {"apiVersion", "kind", "patches"}
        objects = apply_patches(objects, spec["patches"])
    return objects


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return ["kubectl", "kustomize"] if shutil.which("kubectl") else None


def kustomize_build(tmp_path: Path, components: tuple[Path, ...] = ()) -> list[dict]:
    """The real kustomize, on an overlay of the base (a Component cannot be built alone)."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    rel = [Path(os.path.relpath(p, overlay)).as_posix() for p in (K8S, *components)]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": rel[:1], **({"components": rel[1:]} if components else {})}))
    out = subprocess.run([*kustomize_command(), str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc is not None]


@functools.cache
def base() -> tuple[dict, ...]:
    return tuple(assemble())


def objects_of(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def the(kind: str, name: str, objects: list[dict] | None = None) -> dict:
    found = objects_of(objects or base(), kind)
    assert name in found, f"no {kind} {name}"
    return found[name]


def container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def literal_env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def secret_env(c: dict) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def container_port(c: dict, port) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        assert port in {p["containerPort"] for p in c["ports"]}, f"{c['name']}: {port} is no container port"
        return port
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in named, f"{c['name']}: no port named {port}"
    return named[port]


def probe_port(c: dict, probe: dict) -> int:
    kind = next(k for k in ("grpc", "tcpSocket", "httpGet") if k in probe)
    return container_port(c, probe[kind]["port"])


def compose_ports(svc: dict) -> set[int]:
    ports = set()
    for mapping in svc.get("ports", []):
        published, _, inside = mapping.partition(":")
        assert published == inside, f"compose publishes {mapping}: the k8s Services keep one number"
        ports.add(int(inside))
    return ports


def quantity(value) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores, bytes)."""
    number, unit = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi)?", str(value)).groups()
    return float(number) * {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[unit]


def service_for(host_port: str, objects: list[dict] | None = None) -> tuple[dict, int]:
    """The workload behind a host:port address: the Service of that name, the container port its port
    targets."""
    objects = objects or base()
    host, _, port = host_port.rpartition(":")
    service = the("Service", host, objects)
    [sp] = [p for p in service["spec"]["ports"] if p["port"] == int(port)] or [None]
    assert sp, f"Service {host} has no port {port}"
    selector = service["spec"]["selector"]
    [workload] = [w for kind in WORKLOADS for w in objects_of(objects, kind).values()
                  if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()] or [None]
    assert workload, f"Service {host} selects no workload"
    return workload, container_port(container(workload), sp.get("targetPort", sp["port"]))


# ---------------------------------------------------------------------------- the manifests

def test_every_manifest_parses_and_the_base_lists_every_one():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for path in K8S.rglob("*.yaml"):
        docs = load_all(path)                                    # parses, every document
        assert docs, path
        if path.name == "kustomization.yaml" or path == API_KEYS_EXAMPLE:
            continue
        assert path.parent == K8S and path.name in listed, f"{path} is not in kustomization.yaml's resources"
    assert API_KEYS_EXAMPLE.name not in listed, "the API-key Secret is an example, created by hand"
    assert kustomization["namespace"] == NAMESPACE
    assert any(g["pairs"] == PART_OF and g["includeSelectors"] for g in kustomization["labels"])
    assert [i["name"] for i in kustomization["images"]] == ["meshllm"] and kustomization["images"][0]["newTag"]


def test_every_object_has_its_identity_namespace_and_labels():
    """The essential fields, by hand (the schemas below check the rest)."""
    seen = set()
    for obj in base():
        assert {"apiVersion", "kind", "metadata"} <= set(obj) and obj["metadata"]["name"], obj
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{key} twice"
        seen.add(key)
        assert obj["metadata"]["labels"].items() >= PART_OF.items(), key
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"]["namespace"] == NAMESPACE, key
        if obj["kind"] in WORKLOADS:
            spec = obj["spec"]
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), key
            assert spec["selector"]["matchLabels"].items() >= PART_OF.items()


@pytest.mark.skipif(kustomize_command() is None, reason="neither kustomize nor kubectl is on PATH")
@pytest.mark.parametrize("components", [(), (EXTERNAL_REDIS,)], ids=["base", "external-redis"])
def test_the_assembler_builds_what_kustomize_builds(tmp_path, components):
    """The assembler the other tests use, checked against the real thing where it exists."""
    def key(o):
        return o["kind"], o["metadata"]["name"]
    built, ours = kustomize_build(tmp_path, components), assemble(components=components)
    assert sorted(map(key, built)) == sorted(map(key, ours))
    for mine in ours:
        assert next(o for o in built if key(o) == key(mine)) == mine, key(mine)


@pytest.mark.parametrize("version", ["1.27.0", "latest"])
def test_every_object_matches_the_kubernetes_schemas(version):
    """Strict: an unknown or misspelled field fails too. 1.27: native gRPC probes are GA there."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")      # bundles the schemas: no network
    version = kubernetes_validate.latest_version() if version == "latest" else version
    for obj in [*base(), *assemble(components=(EXTERNAL_REDIS,)), *load_all(API_KEYS_EXAMPLE)]:
        kubernetes_validate.validate(obj, version, strict=True)
    typo = copy.deepcopy(the("Deployment", "worker"))
    container(typo)["imagePullPolcy"] = "IfNotPresent"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)


# ---------------------------------------------------------------------------- against compose

def test_the_workloads_run_the_compose_images_and_commands():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    tag = kustomization["images"][0]["newTag"]
    parser = build_parser()
    assert set(objects_of(base(), "Deployment")) == set(OURS)
    for name, svc in OURS.items():
        c = container(the("Deployment", name))
        assert c["image"] == f"meshllm:{tag}" and svc["image"] == "meshllm:latest", name
        # args = compose's command: both replace the image's CMD and keep its ENTRYPOINT (meshllm)
        assert "command" not in c and c["args"] == svc["command"], name
        parser.parse_args(c["args"])
    redis, compose_redis = the("StatefulSet", "redis"), COMPOSE["services"]["redis"]
    c = container(redis)
    assert c["image"] == compose_redis["image"]
    assert "command" not in c, "the redis image's entrypoint must run (it drops root)"
    assert c["args"] == [a.replace(PASSWORD_VARIABLE, "$(REDIS_PASSWORD)") for a in compose_redis["command"]]
    assert secret_env(c) == {"REDIS_PASSWORD": ("meshllm-redis", "REDIS_PASSWORD"),
                             "REDISCLI_AUTH": ("meshllm-redis", "REDIS_PASSWORD")}
    [volume] = compose_redis["volumes"]
    [claim] = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": volume.split(":")[1]} in c["volumeMounts"]
    assert redis["spec"]["serviceName"] == "redis" and the("Service", "redis")["spec"]["clusterIP"] == "None"


def test_ports_and_services_match_compose():
    for name, svc in OURS.items():
        deployment = the("Deployment", name)
        c = container(deployment)
        if name == "worker":
            assert "ports" not in c and name not in objects_of(base(), "Service"), "workers serve no port"
            continue
        assert {p["containerPort"] for p in c["ports"]} == compose_ports(svc), name
        assert {p["name"] for p in c["ports"]} == {"http" if name == "openai" else "grpc", "metrics"}, name
        service = the("Service", name)
        assert {p["port"] for p in service["spec"]["ports"]} == compose_ports(svc)
        for sp in service["spec"]["ports"]:
            workload, target = service_for(f"{name}:{sp['port']}")
            assert workload is deployment and target == sp["port"], f"{name}:{sp['port']}"
    for service in objects_of(base(), "Service").values():
        service_for(f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}")   # selects one


def test_the_config_map_and_secrets_carry_the_compose_environment():
    shared = COMPOSE["x-env"]
    data = the("ConfigMap", "meshllm-config")["data"]
    meshllm = {k: str(v) for k, v in shared.items() if k.startswith("MESHLLM_")}
    assert data == meshllm, "the ConfigMap is compose's x-env, MESHLLM_* settings only"
    secret = the("Secret", "meshllm-redis")["stringData"]
    assert secret["REDIS_URL"] == compose_expand(shared["REDIS_URL"])
    url = urlsplit(secret["REDIS_URL"])
    assert url.password == secret["REDIS_PASSWORD"], "the password redis-server requires is the URL's"
    workload, port = service_for(f"{url.hostname}:{url.port}")
    assert workload is the("StatefulSet", "redis") and port == 6379
    config_module.RedisConfig(redis_url=secret["REDIS_URL"])
    known = known_env_names() | {"NUMBA_NUM_THREADS"}          # numba's own, read at import
    for name, svc in OURS.items():
        c = container(the("Deployment", name))
        refs = c["envFrom"]
        assert {"configMapRef": {"name": "meshllm-config"}} in refs, name
        if name != "worker":
            assert {"secretRef": {"name": "meshllm-api-keys", "optional": True}} in refs, name
        env = literal_env(c)
        own = {k: str(v) for k, v in svc["environment"].items() if k not in shared}
        assert {k for k in env if k not in K8S_ONLY_ENV} == set(own), name
        for key, value in own.items():
            if key.endswith("_ADDRESS"):
                # compose's service name and port, as this namespace's Service for the same command
                compose_host, _, compose_port = value.rpartition(":")
                workload, port = service_for(env[key])
                assert container(workload)["args"] == OURS[compose_host]["command"], f"{name}: {key}"
                assert port == int(compose_port), f"{name}: {key}"
            else:
                assert env[key] == value, f"{name}: {key}={env[key]!r}, compose {value!r}"
        assert set(env) <= known, f"{name}: variables no config field reads: {set(env) - known}"
        expected = {"REDIS_URL": ("meshllm-redis", "REDIS_URL")} if name in USES_REDIS else {}
        assert secret_env(c) == expected, name
    example = load_all(API_KEYS_EXAMPLE)[0]
    assert example["metadata"]["name"] == "meshllm-api-keys" and set(example["stringData"]) <= known


def test_probes_check_what_compose_checks_on_the_right_ports():
    parser = build_parser()
    for name, svc in OURS.items():
        c = container(the("Deployment", name))
        probes = {k: c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert all(probes.values()), f"{name}: {probes}"
        startup = probes["startupProbe"]
        # a node whose CPU differs from the image builder's recompiles the kernels: minutes
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, name
        check = svc["healthcheck"]["test"][1:]                   # ["meshllm", "health", ...]
        if name == "worker":
            heartbeat = literal_env(c)["MESHLLM_HEARTBEAT_FILE"]
            assert probes["readinessProbe"]["exec"]["command"] == check
            for probe in probes.values():
                command = probe["exec"]["command"]
                assert command[:2] == ["meshllm", "health"] and probe["timeoutSeconds"] >= 5, command
                args = parser.parse_args(command[1:])
                assert args.heartbeat_file == heartbeat
            continue
        address = check[2]
        if name == "openai":
            url = urlsplit(address)
            assert probes["readinessProbe"]["httpGet"]["path"] == url.path == "/health"
            port = url.port
        else:
            assert "grpc" in probes["readinessProbe"], f"{name}: readiness is grpc.health, as compose's check"
            port = int(address.rpartition(":")[2])
        for kind, probe in probes.items():
            assert probe_port(c, probe) == port, f"{name}: {kind}"
    redis = container(the("StatefulSet", "redis"))
    compose_check = COMPOSE["services"]["redis"]["healthcheck"]["test"]
    assert compose_check[0] == "CMD-SHELL"
    assert redis["readinessProbe"]["exec"]["command"] == ["sh", "-c", compose_check[1]]
    assert probe_port(redis, redis["livenessProbe"]) == 6379


def test_the_worker_autoscaler_and_drain():
    worker, hpa = the("Deployment", "worker"), the("HorizontalPodAutoscaler", "worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": worker["apiVersion"], "kind": "Deployment",
                                             "name": worker["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == worker["spec"]["replicas"] == 2 < hpa["spec"]["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    exported = {m.name for m in METRICS.registry.collect()}
    assert metrics["External"]["external"]["metric"]["name"] == "meshllm_queue_length" in exported
    assert metrics["Resource"]["resource"]["name"] == "cpu", "the fallback that needs no metrics adapter"
    drain = inspect.signature(Worker.run).parameters["drain_timeout_s"].default
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + 10 and grace >= int(OURS["worker"]["stop_grace_period"].rstrip("s"))


def test_resources_and_scrape_annotations():
    for kind in WORKLOADS:
        for name, workload in objects_of(base(), kind).items():
            c = container(workload)
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert quantity(requests[resource]) <= quantity(limits[resource]), f"{name}: {resource}"
            annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
            metrics = [p["containerPort"] for p in c.get("ports", []) if p["name"] == "metrics"]
            if metrics:
                assert annotations["prometheus.io/scrape"] == "true", name
                assert annotations["prometheus.io/port"] == str(metrics[0]), name
            else:
                assert "prometheus.io/scrape" not in annotations, f"{name} serves no metrics"
    worker = container(the("Deployment", "worker"))
    env, requests = literal_env(worker), worker["resources"]["requests"]
    assert quantity(requests["cpu"]) == int(env["MESHLLM_THREADS"]) == 2, "the engine's threads, its CPU"
    # the KV pool is allocated up front: the request covers it and the model
    assert quantity(requests["memory"]) > int(env["MESHLLM_KV_CACHE_MB"]) * 2**20 + 512 * 2**20
    retrieval = container(the("Deployment", "retrieval"))
    assert quantity(retrieval["resources"]["limits"]["cpu"]) == int(literal_env(retrieval)["NUMBA_NUM_THREADS"])


def test_the_external_redis_component_removes_redis_and_repoints_the_url():
    external = assemble(components=(EXTERNAL_REDIS,))
    def keys(objects):
        return {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert keys(base()) - keys(external) == {("StatefulSet", "redis"), ("Service", "redis")}
    assert keys(external) <= keys(base())
    secret = the("Secret", "meshllm-redis", external)["stringData"]
    in_cluster = the("Secret", "meshllm-redis")["stringData"]["REDIS_URL"]
    assert set(secret) == {"REDIS_URL"} and secret["REDIS_URL"] != in_cluster
    config_module.RedisConfig(redis_url=secret["REDIS_URL"])
    for name in USES_REDIS:
        assert secret_env(container(the("Deployment", name, external)))["REDIS_URL"] == ("meshllm-redis", "REDIS_URL")
