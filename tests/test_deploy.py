"""deploy/: the Kubernetes kustomization (rendered with ``kubectl kustomize`` where present, and every object checked
against the Kubernetes schemas by kubernetes-validate, whose schemas are packaged, so this runs offline), the
compose file's structure, the Prometheus and Grafana files it mounts, and the Dockerfile."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.settings import settings_from_dict

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES = "1.30.0"  # the oldest version the manifests promise to work on (autoscaling/v2, policy/v1)
SECRET_NAMES = {"ROUTE_LLM_API_KEYS", "ROUTE_LLM_ADMIN_KEYS", "GEMINI_API_KEY", "ROUTE_LLM_DATABASE_URL",
                "ROUTE_LLM_REDIS_URL"}


def _resources() -> list[dict[str, Any]]:
    """The objects of the kustomization's resource files, as written (no kubectl needed)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text())
            if doc]


def _rendered() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomization is not rendered (its files are still validated)")
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _valid(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_every_resource_file_is_valid_against_the_kubernetes_schemas() -> None:
    objects = _resources()
    assert {o["kind"] for o in objects} == {"Namespace", "Secret", "Deployment", "Service",
                                            "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for obj in objects:
        _valid(obj)


@pytest.mark.parametrize(("path", "value"), [
    (("spec", "replicas"), "two"),
    (("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"), "http"),
    (("spec", "template", "spec", "containers", 0, "livenessProbe", "httpGet", "pth"), "/health/live"),
])
def test_the_validator_rejects_a_broken_deployment(path: tuple[Any, ...], value: Any) -> None:
    """Shows the check above can fail: a wrong type or an unknown field (strict) in the Deployment."""
    [deployment] = [copy.deepcopy(o) for o in _resources() if o["kind"] == "Deployment"]
    target = deployment
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        _valid(deployment)


def test_the_rendered_kustomization_is_valid_and_wired_together() -> None:
    objects = _rendered()
    for obj in objects:
        _valid(obj)
    by_kind = {o["kind"]: o for o in objects}
    assert set(by_kind) == {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget"}
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"route-llm"}
    deployment, config_map = by_kind["Deployment"], by_kind["ConfigMap"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    # The generated ConfigMap's hashed name is the one mounted; the Secret holds every variable the config reads.
    mounted = {v["name"]: v for v in pod["spec"]["volumes"]}["config"]["configMap"]["name"]
    assert mounted == config_map["metadata"]["name"] and mounted.startswith("route-llm-config-")
    assert container["envFrom"][0]["secretRef"]["name"] == by_kind["Secret"]["metadata"]["name"]
    assert set(by_kind["Secret"]["stringData"]) == SECRET_NAMES
    selector = deployment["spec"]["selector"]["matchLabels"]
    for selecting in (by_kind["Service"]["spec"]["selector"], by_kind["PodDisruptionBudget"]["spec"]["selector"]
                      ["matchLabels"]):
        assert selecting.items() <= pod["metadata"]["labels"].items() and selecting == selector
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    settings_from_dict(yaml.safe_load(config_map["data"]["config.yaml"]))  # a config route-llm accepts


def test_the_replica_config_takes_postgres_and_redis_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTE_LLM_DATABASE_URL", "postgresql://routellm:pw@postgres:5432/routellm")
    monkeypatch.setenv("ROUTE_LLM_REDIS_URL", "redis://redis:6379/0")
    s = settings_from_dict(yaml.safe_load((K8S / "config.yaml").read_text()))
    assert s.storage_url().startswith("postgresql://") and s.server.resolved_redis_url() == "redis://redis:6379/0"
    assert s.server.host == "0.0.0.0" and s.server.open_metrics


def test_compose_runs_two_replicas_on_one_postgres_and_one_redis_with_monitoring() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"route-llm-1", "route-llm-2", "postgres", "redis", "prometheus", "grafana"}
    replicas = [services["route-llm-1"], services["route-llm-2"]]
    host_ports = set()
    for replica in replicas:
        env = replica["environment"]
        assert "@postgres:5432/" in env["ROUTE_LLM_DATABASE_URL"] and env["ROUTE_LLM_REDIS_URL"].startswith(
            "redis://redis:")
        assert set(replica["depends_on"]) == {"postgres", "redis"}
        assert all(d["condition"] == "service_healthy" for d in replica["depends_on"].values())
        assert replica["image"].startswith("route-llm:") and replica["read_only"] is True
        host_ports.update(p.split(":")[0] for p in replica["ports"])
        for volume in replica["volumes"]:
            assert (DEPLOY / volume.split(":")[0]).is_file(), volume
    assert len(host_ports) == 2  # each replica reachable on its own port
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
    # Prometheus scrapes both replicas; Grafana has it as a data source and the shipped dashboard.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert sorted(job["static_configs"][0]["targets"]) == ["route-llm-1:8000", "route-llm-2:8000"]
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in services["grafana"]["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "route-llm.yaml").read_text())["providers"]
    dashboard_path = provider["options"]["path"]
    dashboards = {target: source for target, source in mounts.items() if target.startswith(dashboard_path)}
    assert dashboards and all(json.loads(p.read_text())["uid"] == "route-llm" for p in dashboards.values())


def test_the_image_is_slim_non_root_and_starts_offline() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) == 2 and all("-slim" in line for line in froms)  # build stage, then a slim runtime
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root")
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in text and "HF_HUB_OFFLINE=1" in text
    assert "--no-index" in text  # the runtime stage installs only the wheels built before it
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    # The router model is baked in because it ships inside the package the image installs.
    assert list((ROOT / "router" / "model").glob("*.onnx"))


def test_local_prometheus_snippet_scrapes_a_default_local_serve(proxy: Any) -> None:
    """deploy/prometheus/local.yml: one job on the address `route-llm serve` listens on by default, at a path
    that answers Prometheus text (checked against a running proxy on its own port)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from proxy.settings import ServerSettings

    config = yaml.safe_load((DEPLOY / "prometheus" / "local.yml").read_text())
    [job] = config["scrape_configs"]
    [targets] = [c["targets"] for c in job["static_configs"]]
    default = ServerSettings()
    assert targets == [f"{default.host}:{default.port}"] and job["job_name"] == "route-llm"
    assert config["global"]["scrape_interval"].endswith("s")
    scraped = httpx.get(proxy.base_url + job.get("metrics_path", "/metrics"), timeout=30)
    assert scraped.status_code == 200
    assert "route_llm_info" in {f.name for f in text_string_to_metric_families(scraped.text)}
