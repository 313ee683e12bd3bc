"""The metrics dashboard (monitoring/) checked against the code, with no service running: every
PromQL query names only metrics, labels and label values the services really export, every panel
reads the provisioned datasource, Prometheus scrapes each compose service's metrics port, and the
compose mounts point at the repository's folders. A misspelled name fails here, not as a panel
that silently stays empty."""
import json
import re
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from services.common.metrics import METRICS, Metrics
from services.openai_api.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
SCRAPE = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
DASHBOARD = json.loads((MONITORING / "grafana/dashboards/meshllm.json").read_text())
DATASOURCES = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
PROVIDERS = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/meshllm.yml").read_text())
EXPRS = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]

# The files that register metrics, and their registries; a new one must be added here (and scraped)
METRIC_MODULES = {"services/common/metrics.py": METRICS.registry,
                  "services/openai_api/metrics.py": GatewayMetrics().registry}
# The series a family of each type exports (prometheus_client; a counter's family name lacks _total)
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}
PROMETHEUS_SERIES = {"up"}                            # added by Prometheus to every scraped target
SCRAPE_LABELS = {"job", "instance", "le"}             # le: the histogram buckets' label
FUNCTIONS = {"sum", "avg", "min", "max", "count", "topk", "rate", "irate", "increase", "delta", "deriv",
             "histogram_quantile", "clamp_min", "clamp_max", "abs", "vector", "avg_over_time", "max_over_time"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right"}
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
MATCHER = r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"'


def registered_series() -> set[str]:
    names = set()
    for registry in METRIC_MODULES.values():
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
            names |= {sample.name for sample in family.samples}
    return names


def registered_labels() -> set[str]:
    metrics = [m for cls in (Metrics, GatewayMetrics) for m in vars(cls()).values() if isinstance(m, MetricWrapperBase)]
    return {label for m in metrics for label in m._labelnames} | SCRAPE_LABELS


def label_values() -> dict[str, set[str]]:
    """The values the dashboard may match exactly: scrape jobs, gRPC service and method names, codes."""
    sources = [(ROOT / f"services/{s}/service.py").read_text() for s in ("tokenizer", "retrieval", "generation")]
    return {"job": {job["job_name"] for job in SCRAPE["scrape_configs"]},
            "service": {re.search(r'^SERVICE = "([^"]+)"', text, re.M).group(1) for text in sources},
            "method": {m for text in sources for m in re.findall(r"async def ([A-Z]\w*)\(", text)},
            "code": {code.name for code in grpc.StatusCode}}


SERIES, LABELS, VALUES = registered_series(), registered_labels(), label_values()


def problems(expr: str) -> list[str]:
    """What in a PromQL expression names nothing the services export (empty: all of it is real)."""
    found = [f"metric {name}" for name in re.findall(r"meshllm_[a-z0-9_]+", expr) if name not in SERIES]
    labels = [label.strip() for group in re.findall(GROUPING, expr) for label in group.split(",") if label.strip()]
    for label, op, value in re.findall(MATCHER, expr):
        labels.append(label)
        # an exact value, or each alternative of a plain a|b|c regex, of a label whose values are known
        if label in VALUES and op in ("=", "!=", "=~") and (op != "=~" or re.fullmatch(r"[\w.|]+", value)):
            found += [f'{label}="{v}"' for v in value.split("|") if v not in VALUES[label]]
    found += [f"label {label}" for label in labels if label not in LABELS]
    # what is left outside strings, matchers, ranges and grouping clauses: functions, keywords, metrics
    bare = re.sub(GROUPING, "", re.sub(r"\[[^\]]*\]", "", re.sub(r"\{[^}]*\}", "", re.sub(r'"[^"]*"', "", expr))))
    for name, call in re.findall(r"([a-zA-Z_:][\w:]*)\s*(\(?)", bare):
        if call:
            found += [] if name in FUNCTIONS else [f"function {name}"]
        elif name not in KEYWORDS | SERIES | PROMETHEUS_SERIES:
            found.append(f"metric {name}")
    return list(dict.fromkeys(found))


def test_every_query_names_only_what_the_services_export():
    assert len(EXPRS) >= 20
    for expr in EXPRS:
        assert not problems(expr), f"{expr}: {problems(expr)}"


@pytest.mark.parametrize("expr, problem", [
    ('meshllm_worker{job="generation"}', "metric meshllm_worker"),
    ("sum(rate(meshllm_generated_tokens[5m]))", "metric meshllm_generated_tokens"),      # a counter without _total
    ("histogram_quantile(0.5, sum by (le) (rate(meshllm_time_to_first_token_seconds[1m])))",
     "metric meshllm_time_to_first_token_seconds"),                                    # a histogram without _bucket
    ('sum(upp{job="openai"})', "metric upp"),
    ('meshllm_workers{job="generaton"}', 'job="generaton"'),
    ('meshllm_request_seconds_count{service="meshllm.v1.Retrieval", method="Serach"}', 'method="Serach"'),
    ("sum by (status_code) (rate(meshllm_http_requests_total[1m]))", "label status_code"),
    ("rates(meshllm_prompt_tokens_total[1m])", "function rates"),
])
def test_the_check_catches_a_misspelled_name(expr, problem):
    assert problem in problems(expr)


def test_only_the_known_modules_register_metrics():
    uses = {str(p.relative_to(ROOT)) for p in (ROOT / "services").rglob("*.py") if "prometheus_client" in p.read_text()}
    assert uses == set(METRIC_MODULES), "a module with its own metrics: add its registry here and scrape it"


def test_every_panel_reads_the_provisioned_datasource():
    (source,) = DATASOURCES["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", "prometheus")
    assert DASHBOARD["refresh"] == "5s" and DASHBOARD["schemaVersion"] >= 39
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"]["uid"] == source["uid"] and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"] and target["expr"].strip(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def metrics_port(service: dict) -> int:
    """The port a compose service serves /metrics on (0: none): a --metrics-port argument, else a
    *METRICS_PORT variable (MESHLLM_METRICS_PORT, the gateway's MESHLLM_OPENAI_METRICS_PORT)."""
    command = [str(arg) for arg in service.get("command") or []]
    for i, arg in enumerate(command):
        if arg == "--metrics-port":
            return int(command[i + 1])
        if arg.startswith("--metrics-port="):
            return int(arg.partition("=")[2])
    ports = [int(v) for k, v in (service.get("environment") or {}).items() if k.endswith("METRICS_PORT")]
    return ports[0] if ports else 0


def test_prometheus_scrapes_every_metrics_port_of_the_compose_stack():
    ports = {name: metrics_port(svc) for name, svc in COMPOSE.items() if svc.get("image") == "meshllm:latest"}
    exposed = {name: port for name, port in ports.items() if port}
    assert set(exposed) == {"tokenizer", "retrieval", "generation", "openai"}
    # workers serve no /metrics: the Generation service exports their Redis heartbeats (prometheus.yml)
    assert ports["worker"] == 0 and "METRICS" not in (ROOT / "services/worker/worker.py").read_text()
    for name, port in exposed.items():
        assert f"{port}:{port}" in COMPOSE[name]["ports"], name
    assert SCRAPE["global"]["scrape_interval"] == "5s"
    targets = {job["job_name"]: [t for config in job["static_configs"] for t in config["targets"]]
               for job in SCRAPE["scrape_configs"]}
    assert targets == {name: [f"{name}:{port}"] for name, port in exposed.items()}


def host_path(service: str, container_path: str) -> Path:
    """The repository path a service's read-only bind mount puts at container_path."""
    for volume in COMPOSE[service]["volumes"]:
        source, target, mode = volume.split(":")
        if container_path == target or container_path.startswith(target + "/"):
            assert source.startswith("./") and mode == "ro", volume
            return ROOT / source / container_path[len(target):].lstrip("/")
    raise AssertionError(f"{service} mounts nothing at {container_path}")


def test_the_monitoring_services_mount_the_repositorys_folders():
    prometheus, grafana = COMPOSE["prometheus"], COMPOSE["grafana"]
    assert prometheus["image"].startswith("prom/prometheus") and grafana["image"].startswith("grafana/grafana")
    # only with --profile monitoring: a plain `docker compose up` starts what it did before
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    assert not [name for name, svc in COMPOSE.items() if "profiles" in svc and name not in ("prometheus", "grafana")]
    assert host_path("prometheus", "/etc/prometheus/prometheus.yml") == MONITORING / "prometheus.yml"
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    assert provisioning == MONITORING / "grafana/provisioning" and provisioning.is_dir()
    for provisioned in ("datasources/prometheus.yml", "dashboards/meshllm.yml"):
        assert (provisioning / provisioned).is_file()
    (provider,) = PROVIDERS["providers"]
    assert provider["type"] == "file"
    assert (host_path("grafana", provider["options"]["path"]) / "meshllm.json").is_file()
    env = grafana["environment"]
    assert host_path("grafana", env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()
    assert (env["GF_AUTH_ANONYMOUS_ENABLED"], env["GF_AUTH_ANONYMOUS_ORG_ROLE"]) == ("true", "Viewer")
    assert "prometheus" in grafana["depends_on"] and "3000:3000" in grafana["ports"]
    # Grafana reaches Prometheus by its compose service name, on the port the container listens on
    assert DATASOURCES["datasources"][0]["url"] == "http://prometheus:9090" and "9090:9090" in prometheus["ports"]
