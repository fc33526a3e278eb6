"""Keep deploy/ honest without Docker or a cluster.

Every file parses; every command a container runs is a real `bus` command; every subscriber of
the topology has its compose service, Deployment, PodDisruptionBudget and ScaledObject, except a
subscriber listed in EMBEDDED, which runs inside its host's process and is checked there; the
Kubernetes manifests validate against the Kubernetes schemas; generated files match a fresh
generation. A subscriber added to or removed from the topology fails until
`python scripts/sync_deploy.py` brings the seven deploy files in line (`deploy_gaps` names them:
compose.yaml, prometheus.yml, k8s/NAME.yaml, k8s/kustomization.yaml, k8s/keda.yaml, and the two
generated ones, rabbitmq/definitions.json and k8s/topology.yaml).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate as kv
import pytest
import typer
import yaml

from bus.cli import app

try:  # typer >= 0.20 vendors click as typer._click; older typer runs on click itself
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click import ClickException, UsageError  # type: ignore[assignment]
from bus.topology import export
from bus.topology.model import Subscriber, Topology, load
from tests.conftest import tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TOPOLOGY = ROOT / "topology" / "topology.yaml"
K8S_VERSION = "1.30.0"
METRICS_PORT = "9100"

# Subscribers that run inside another process rather than as their own `bus run` service:
# subscriber -> the compose service and k8s Deployment that embed it. They have no service, no
# PodDisruptionBudget and no ScaledObject of their own; their host is checked instead.
EMBEDDED = {"orders": "api"}
# Containers of the bus image that run a Python module instead of the `bus` CLI: name -> command.
NOT_BUS_CLI = {
    "api": ["python", "-m", "api"],
    "warehouse": ["python", "-m", "demo.stubs", "warehouse", "--port", "8081"],  # the stand-in
}
API_PORT = 8000


@cache
def topology() -> Topology:
    return load(TOPOLOGY)


def subscribers() -> list[Subscriber]:
    """The subscribers that are services of their own (`bus run NAME`)."""
    return [s for s in topology().subscribers() if s.name not in EMBEDDED]


@cache
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in ("topology.yaml",))


@cache
def k8s_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every manifest in deploy/k8s, kustomization included."""
    out = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
            out.append((path.name, doc))
    return tuple(out)


def kind(name: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_docs() if d.get("kind") == name]


def by_name(name: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kind(name)}


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())  # type: ignore[no-any-return]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]  # type: ignore[no-any-return]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


# --- the `bus` command line each container runs -----------------------------------------------


def resolve(args: list[str]) -> str:
    """The command path `bus ARGS` runs; raises UsageError where `bus` would refuse ARGS.

    Parses exactly as the real CLI does (typer's click command), without invoking anything.
    """
    cmd: Any = typer.main.get_command(app)
    ctx = cmd.make_context("bus", list(args))
    path = ["bus"]
    while hasattr(cmd, "resolve_command"):  # a group: descend into the named subcommand
        rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        if not rest:
            raise UsageError(f"`{' '.join(path)}` needs a command", ctx)
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        path.append(name)
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
    return " ".join(path)


def bus_commands() -> list[tuple[str, list[str]]]:
    """(where, args) of every container running the bus image, in compose and in k8s."""
    found: list[tuple[str, list[str]]] = []
    for name, svc in compose()["services"].items():
        if _is_bus_image(str(svc.get("image", ""))):
            if name in NOT_BUS_CLI:
                assert svc["entrypoint"] == NOT_BUS_CLI[name], f"compose {name}: entrypoint"
                continue
            assert "entrypoint" not in svc, f"compose {name}: the image's ENTRYPOINT is `bus`"
            command = svc.get("command")
            assert isinstance(command, list), f"compose {name}: give `command:` as a list"
            found.append((f"compose service {name}", [str(a) for a in command]))
    for file, doc in k8s_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c["image"] != "bus":
                continue
            name = doc["metadata"]["name"]
            if name in NOT_BUS_CLI and c.get("command") == NOT_BUS_CLI[name]:
                continue  # not the CLI: checked by test_k8s_api_deployment_is_production_shaped
            args = [str(a) for a in c.get("args", [])]
            if "command" in c:
                assert c["command"][:1] == ["bus"], f"{file}: command must start with bus"
                args = [str(a) for a in c["command"][1:]] + args
            found.append((f"{file} {doc['kind']} {doc['metadata']['name']}", args))
    return found


def _is_bus_image(image: str) -> bool:
    return image.startswith("${BUS_IMAGE") or image.split(":")[0] == "bus"


def test_compose_and_k8s_run_the_bus_image() -> None:
    where = [w for w, _ in bus_commands()]
    assert sum(w.startswith("compose") for w in where) >= 5, where
    assert sum(not w.startswith("compose") for w in where) >= 5, where


@pytest.mark.parametrize(("where", "args"), bus_commands(), ids=lambda v: str(v))
def test_every_container_runs_a_real_bus_command(where: str, args: list[str]) -> None:
    try:
        resolve(args)
    except ClickException as exc:
        pytest.fail(
            f"{where}: `bus {' '.join(args)}` is not a valid command: {exc.format_message()}"
        )


def test_resolve_refuses_what_bus_refuses() -> None:
    assert resolve(["run", "email", "--metrics-port", "9100"]) == "bus run"
    assert resolve(["topology", "apply"]) == "bus topology apply"
    for bad in (["topology", "aply"], ["run"], ["run", "email", "--port", "1"], ["topology"]):
        with pytest.raises(UsageError):
            resolve(bad)


# --- generated files --------------------------------------------------------------------------


def test_definitions_json_matches_a_fresh_export() -> None:
    committed = (DEPLOY / "rabbitmq" / "definitions.json").read_text()
    fresh = export.to_json(export.definitions(topology()))
    assert committed == fresh, (
        "deploy/rabbitmq/definitions.json is stale; regenerate it with: "
        "bus topology export --format definitions -o deploy/rabbitmq/definitions.json"
    )


def test_k8s_topology_copy_matches_the_topology() -> None:
    assert (K8S / "topology.yaml").read_text() == TOPOLOGY.read_text(), (
        "deploy/k8s/topology.yaml differs from topology/topology.yaml; refresh the copy with: "
        "cp topology/topology.yaml deploy/k8s/topology.yaml"
    )


# --- compose ----------------------------------------------------------------------------------


def test_compose_has_a_healthy_service_per_subscriber() -> None:
    services = compose()["services"]
    for sub in subscribers():
        assert sub.name in services, f"compose.yaml has no service for subscriber {sub.name}"
        svc = services[sub.name]
        assert svc["command"][:2] == ["run", sub.name], sub.name
        port = svc["command"][svc["command"].index("--metrics-port") + 1]
        check = " ".join(svc["healthcheck"]["test"])
        assert f":{port}/healthz" in check, f"{sub.name}: healthcheck must ask /healthz on {port}"
        assert svc["depends_on"]["topology"]["condition"] == "service_completed_successfully"
        assert svc["restart"] in ("unless-stopped", "always", "on-failure")
        env = svc["environment"]
        assert env["BUS_URL"].startswith("amqp://${"), "credentials come from env vars"
        assert env["BUS_STORE_URL"].startswith("postgresql://")
        assert int(env["BUS_GRACE_PERIOD"]) < _seconds(svc["stop_grace_period"])


def _seconds(text: str) -> int:
    m = re.fullmatch(r"(\d+)s", text)
    assert m, text
    return int(m.group(1))


def test_compose_wires_the_peers() -> None:
    services = compose()["services"]
    assert services["topology"]["command"] == ["topology", "apply"]
    assert services["topology"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert "management" in services["rabbitmq"]["image"]
    assert services["email"]["environment"]["SMTP_URL"] == "smtp://mailpit:1025"
    assert "mailpit" in services["mailpit"]["image"]
    assert "WAREHOUSE_URL" in services["fulfillment"]["environment"]
    assert services["analytics"]["environment"]["ANALYTICS_DB_URL"].startswith("postgresql://")
    assert services["scheduler"]["command"][:1] == ["scheduler"]
    assert services["scheduler"]["deploy"]["replicas"] == 2
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            host = volume.split(":")[0]
            if host.startswith("./"):
                assert (DEPLOY / host).exists(), f"compose {name} mounts missing {host}"
    build = services["topology"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_prometheus_scrapes_every_subscriber() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for t in group["targets"]
    }
    for sub in subscribers():
        assert f"{sub.name}:{METRICS_PORT}" in targets, f"prometheus does not scrape {sub.name}"
    for sub, host in EMBEDDED.items():  # its bus_* metrics are on its host's /metrics
        assert f"{host}:{API_PORT}" in targets, f"prometheus does not scrape {host} ({sub})"


def test_grafana_provisioning_parses() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((prov / "dashboards" / "bus.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dockerfile_is_slim_non_root_and_runs_bus() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert re.search(r'^ENTRYPOINT \["bus"\]$', text, re.M)
    uid = users[-1].split(":")[0]
    for d in kind("Deployment"):
        ctx = d["spec"]["template"]["spec"]["securityContext"]
        assert str(ctx["runAsUser"]) == uid, "k8s runAsUser must be the image's USER"


# --- Kubernetes -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    k = kustomization()
    listed = set(k["resources"])
    on_disk = {p.name for p in k8s_files()} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk
    generator = {g["name"]: g for g in k["configMapGenerator"]}
    assert generator["bus-topology"]["files"] == ["topology.yaml"]


def test_every_subscriber_has_deployment_pdb_and_scaledobject() -> None:
    deployments, pdbs, scaled = (
        by_name("Deployment"),
        by_name("PodDisruptionBudget"),
        by_name("ScaledObject"),
    )
    for sub in subscribers():
        assert sub.name in deployments, f"no Deployment for subscriber {sub.name}"
        assert sub.name in pdbs, f"no PodDisruptionBudget for subscriber {sub.name}"
        assert sub.name in scaled, f"no ScaledObject for subscriber {sub.name}"
        labels = deployments[sub.name]["spec"]["template"]["metadata"]["labels"]
        selector = pdbs[sub.name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"PDB {sub.name} selects no {sub.name} pod"
    assert by_name("Deployment")["scheduler"]["spec"]["replicas"] == 2
    assert container(by_name("Deployment")["scheduler"])["args"][:1] == ["scheduler"]


@pytest.mark.parametrize("name", [s.name for s in subscribers()])
def test_subscriber_deployment_is_production_shaped(name: str) -> None:
    d = by_name("Deployment")[name]
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert c["args"][:2] == ["run", name]
    port = int(c["args"][c["args"].index("--metrics-port") + 1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        p = c[probe]["httpGet"]["port"]
        assert (ports[p] if isinstance(p, str) else p) == port, f"{probe} must ask port {port}"
    env = env_of(c)
    assert pod["terminationGracePeriodSeconds"] == 40
    assert env["BUS_GRACE_PERIOD"]["value"] == "30"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    for secret in ("BUS_URL", "BUS_STORE_URL"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "bus-secrets", secret
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/app/.bus"]], "a writable .bus/ on a read-only root"
    topo_dir = str(Path(env["BUS_TOPOLOGY"]["value"]).parent)
    assert volumes[mounts[topo_dir]]["configMap"]["name"] == "bus-topology"


def test_no_credentials_are_written_in_k8s_manifests() -> None:
    for file, doc in k8s_docs():
        if doc.get("kind") == "Secret":
            continue
        for value in re.findall(r"\w+://[^\s\"']*@", json.dumps(doc)):
            pytest.fail(f"{file}: credentials in {value}: use a secretKeyRef")


def test_secret_example_holds_every_referenced_key_as_placeholder() -> None:
    secret = by_name("Secret")["bus-secrets"]
    data = secret["stringData"]
    assert all("CHANGE-ME" in v for k, v in data.items() if "://" in v and "@" in v)
    assert "EXAMPLE" in (K8S / "secret.example.yaml").read_text().split("\n", 1)[0]
    for file, doc in k8s_docs():
        for ref in _secret_refs(doc):
            assert ref["name"] == "bus-secrets", file
            assert ref["key"] in data, f"{file}: key {ref['key']} missing from the example"


def _secret_refs(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        own = [node["secretKeyRef"]] if "secretKeyRef" in node else []
        if "secretTargetRef" in node:
            own += node["secretTargetRef"]
        return own + [r for v in node.values() for r in _secret_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _secret_refs(v)]
    return []


def test_topology_job_applies_the_topology() -> None:
    job = by_name("Job")["bus-topology-apply"]
    assert container(job)["args"] == ["topology", "apply"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_keda_scaledobjects_scale_each_subscriber_on_its_queue_length() -> None:
    """KEDA's CRDs are not in the Kubernetes schemas: check their structure here."""
    deployments = by_name("Deployment")
    auths = by_name("TriggerAuthentication")
    for sub in subscribers():
        so = by_name("ScaledObject")[sub.name]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert spec["scaleTargetRef"]["name"] == sub.name
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["minReplicaCount"] >= 1, "keep one consumer (PDB, readiness) at all times"
        [trigger] = spec["triggers"]
        assert trigger["type"] == "rabbitmq"
        meta = trigger["metadata"]
        assert meta["mode"] == "QueueLength"
        assert meta["queueName"] == sub.queue, f"{sub.name} must scale on queue {sub.queue}"
        assert isinstance(meta["value"], str) and int(meta["value"]) > 0
        assert meta["protocol"] == "amqp"
        auth = auths[trigger["authenticationRef"]["name"]]
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
        assert "host" in params


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    checked = 0
    for file, doc in k8s_docs():
        api = str(doc.get("apiVersion", ""))
        if api.startswith("keda.sh/") or api.startswith("kustomize.config.k8s.io/"):
            continue  # not Kubernetes kinds: checked structurally above
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{file} {doc.get('kind')} {doc['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 9


def test_kustomize_build_succeeds_and_validates() -> None:
    kubectl = tool("kubectl", "`kubectl kustomize deploy/k8s`")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, f"kubectl kustomize deploy/k8s failed: {built.stderr}"
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(maps) == 1 and maps[0]["data"]["topology.yaml"] == TOPOLOGY.read_text()
    generated = maps[0]["metadata"]["name"]
    for d in docs:
        assert d["metadata"].get("namespace", "bus") == "bus"
        if d["apiVersion"].startswith("keda.sh/"):
            continue
        kv.validate(d, K8S_VERSION, strict=True)
        for v in d.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] == generated, "kustomize did not rewrite the name"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    kept = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for sources in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for src in sources.split():
            if src.endswith("*"):
                continue  # optional (README.md*)
            assert src in kept, f"COPY {src}: Dockerfile.dockerignore leaves it out of the context"
            assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"


def test_prometheus_config_passes_promtool() -> None:
    promtool = tool("promtool", "deploy/prometheus/prometheus.yml")
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"promtool check config failed:\n{done.stdout}{done.stderr}"


# --- the orders API (embedding subscriber `orders`) and the outbox relay -----------------------


def test_embedded_subscribers_are_declared_and_really_embedded() -> None:
    from api.settings import SUBSCRIBER

    declared = {s.name: s for s in topology().subscribers()}
    assert set(EMBEDDED) <= set(declared), "EMBEDDED names a subscriber the topology lacks"
    assert EMBEDDED == {SUBSCRIBER: "api"}, "the API embeds exactly the subscriber it runs"
    assert declared[SUBSCRIBER].handlers.startswith("api."), "its handlers live in the API"
    scaled = {so["spec"]["scaleTargetRef"]["name"] for so in kind("ScaledObject")}
    for sub, host in EMBEDDED.items():
        assert sub not in compose()["services"], f"{sub} runs inside {host}, not as a service"
        assert sub not in by_name("Deployment"), f"{sub} runs inside {host}, not on its own"
        assert host not in scaled, f"{host} serves HTTP: it is not scaled by KEDA on a queue"


def test_compose_runs_the_api_beside_postgres_not_behind_the_broker() -> None:
    svc = compose()["services"]["api"]
    assert svc["entrypoint"] == NOT_BUS_CLI["api"]
    assert svc["command"][svc["command"].index("--port") + 1] == str(API_PORT)
    assert svc["command"][svc["command"].index("--host") + 1] == "0.0.0.0"
    assert f"{API_PORT}:{API_PORT}" in svc["ports"]
    assert f":{API_PORT}/healthz" in " ".join(svc["healthcheck"]["test"])
    assert set(svc["depends_on"]) == {"postgres"}, "orders are taken while the broker is away"
    env = svc["environment"]
    assert (
        env["BUS_OUTBOX_URL"].startswith("postgresql://") and "@postgres:" in env["BUS_OUTBOX_URL"]
    )
    assert env["BUS_URL"].startswith("amqp://${")
    assert env["BUS_STORE_URL"].startswith("postgresql://")
    assert int(env["BUS_GRACE_PERIOD"]) + 5 < _seconds(svc["stop_grace_period"])


def test_compose_runs_two_relays_on_the_apis_database() -> None:
    services = compose()["services"]
    relay = services["relay"]
    assert relay["command"] == ["relay", "--metrics-port", METRICS_PORT]
    assert relay["deploy"]["replicas"] == 2, "relays run side by side"
    assert (
        relay["environment"]["BUS_OUTBOX_URL"] == services["api"]["environment"]["BUS_OUTBOX_URL"]
    )
    assert relay["depends_on"]["topology"]["condition"] == "service_completed_successfully"
    assert f":{METRICS_PORT}/healthz" in " ".join(relay["healthcheck"]["test"])


def test_k8s_api_deployment_is_production_shaped() -> None:
    d = by_name("Deployment")["api"]
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert c["command"] == NOT_BUS_CLI["api"]
    assert c["args"][c["args"].index("--port") + 1] == str(API_PORT)
    assert c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        p = c[probe]["httpGet"]["port"]
        assert (ports[p] if isinstance(p, str) else p) == API_PORT, f"{probe} must ask {API_PORT}"
    assert d["spec"]["replicas"] >= 2
    env = env_of(c)
    for secret in ("BUS_URL", "BUS_STORE_URL", "BUS_OUTBOX_URL"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "bus-secrets", secret
    assert int(env["BUS_GRACE_PERIOD"]["value"]) + 5 < pod["terminationGracePeriodSeconds"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/app/.bus"]], "a writable .bus/ on a read-only root"
    topo_dir = str(Path(env["BUS_TOPOLOGY"]["value"]).parent)
    assert volumes[mounts[topo_dir]]["configMap"]["name"] == "bus-topology"
    labels = d["spec"]["template"]["metadata"]["labels"]
    service = by_name("Service")["api"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service selects no api pod"
    assert service["spec"]["ports"][0]["targetPort"] in ("http", API_PORT)
    pdb = by_name("PodDisruptionBudget")["api"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_runs_two_relays_with_probes() -> None:
    d = by_name("Deployment")["relay"]
    c = container(d)
    assert d["spec"]["replicas"] == 2, "relays may run side by side"
    assert c["args"] == ["relay", "--metrics-port", METRICS_PORT]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"]["path"] == path
        assert ports[c[probe]["httpGet"]["port"]] == int(METRICS_PORT)
    env = env_of(c)
    for secret in ("BUS_URL", "BUS_OUTBOX_URL"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "bus-secrets", secret
    labels = d["spec"]["template"]["metadata"]["labels"]
    pdb = by_name("PodDisruptionBudget")["relay"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_image_holds_the_packages_its_python_commands_run() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for name, command in NOT_BUS_CLI.items():
        package = command[command.index("-m") + 1].split(".")[0]
        assert re.search(rf"^COPY {package} \S+$", text, re.M), (
            f"{name} runs `{' '.join(command)}`, but deploy/Dockerfile does not COPY {package}/"
        )


# --- the operator's web page (`bus ui`) --------------------------------------------------------

UI_PORT = 8080


def _ui_args_bind_everything_on(args: list[str], port: int) -> None:
    assert resolve(args) == "bus ui"
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--port") + 1] == str(port)


def test_compose_runs_the_ui_behind_its_token_on_this_machine_only() -> None:
    svc = compose()["services"]["ui"]
    _ui_args_bind_everything_on(svc["command"], UI_PORT)
    env = svc["environment"]
    assert env["BUS_UI_TOKEN"].startswith("${BUS_UI_TOKEN"), "without a token 0.0.0.0 is refused"
    assert env["BUS_URL"].startswith("amqp://${")
    assert env["BUS_OUTBOX_URL"] == compose()["services"]["api"]["environment"]["BUS_OUTBOX_URL"]
    assert svc["ports"] == [f"127.0.0.1:{UI_PORT}:{UI_PORT}"], (
        "a laptop's default token stays local"
    )
    assert f":{UI_PORT}/healthz" in " ".join(svc["healthcheck"]["test"])
    assert svc["depends_on"]["topology"]["condition"] == "service_completed_successfully"


def test_k8s_ui_deployment_is_behind_the_secret_and_not_scaled_by_keda() -> None:
    d = by_name("Deployment")["ui"]
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    _ui_args_bind_everything_on(c["args"], UI_PORT)
    assert d["spec"]["replicas"] == 1, "its browse cache lives in the process"
    scaled = {so["spec"]["scaleTargetRef"]["name"] for so in kind("ScaledObject")}
    assert "ui" not in scaled, "the UI serves people: it is not scaled on a queue"
    env = env_of(c)
    for secret in ("BUS_UI_TOKEN", "BUS_URL", "BUS_OUTBOX_URL"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "bus-secrets", secret
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
        assert ports[c[probe]["httpGet"]["port"]] == UI_PORT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    topo_dir = str(Path(env["BUS_TOPOLOGY"]["value"]).parent)
    assert volumes[mounts[topo_dir]]["configMap"]["name"] == "bus-topology"
    labels = d["spec"]["template"]["metadata"]["labels"]
    service = by_name("Service")["ui"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service selects no ui pod"
    assert service["spec"]["ports"][0]["targetPort"] in ("http", UI_PORT)


def test_the_image_ships_the_ui_templates_and_static_files() -> None:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = data["package-data"]["bus"]
    for pattern in ("ui/templates/*.html", "ui/static/*"):
        assert pattern in shipped, f"pip install . (the image) would leave out bus/{pattern}"
        assert list((ROOT / "bus").glob(pattern)), pattern


# --- adding a subscriber: every file to touch, in one message ---------------------------------


def deploy_gaps(names: list[str]) -> list[str]:
    """For each subscriber in *names* (services of their own), the deploy files that lack it,
    each with what to add. A new subscriber needs all of them; generated ones say how."""
    services = compose()["services"]
    prometheus = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    deployments, pdbs, scaled = (
        by_name("Deployment"), by_name("PodDisruptionBudget"), by_name("ScaledObject"),
    )  # fmt: skip
    resources = set(kustomization()["resources"])
    declared = {s.name for s in topology().subscribers()}
    definitions = (DEPLOY / "rabbitmq" / "definitions.json").read_text()
    copy = (K8S / "topology.yaml").read_text()
    gaps = []
    for name in names:
        if name not in services:
            gaps.append(f"deploy/compose.yaml: a service `{name}` (command run {name})")
        if f"{name}:{METRICS_PORT}" not in prometheus:
            gaps.append(f"deploy/prometheus/prometheus.yml: the target {name}:{METRICS_PORT}")
        if name not in deployments or name not in pdbs:
            gaps.append(f"deploy/k8s/{name}.yaml: its Deployment and PodDisruptionBudget")
        if f"{name}.yaml" not in resources:
            gaps.append(f"deploy/k8s/kustomization.yaml: {name}.yaml under resources")
        if name not in scaled:
            gaps.append(f"deploy/k8s/keda.yaml: a ScaledObject for {name}")
        if name not in declared or f'"{name}' not in definitions:
            gaps.append(
                "deploy/rabbitmq/definitions.json: bus topology export --format definitions "
                "-o deploy/rabbitmq/definitions.json"
            )
        if f"  {name}:" not in copy:
            gaps.append("deploy/k8s/topology.yaml: cp topology/topology.yaml deploy/k8s/")
    return gaps


def test_every_subscriber_is_in_every_deploy_file() -> None:
    gaps = deploy_gaps([s.name for s in subscribers()])
    assert not gaps, (
        "a subscriber is missing from deploy/; run `python scripts/sync_deploy.py` (or add:\n  "
        + "\n  ".join(gaps)
        + ")"
    )


# --- scripts/sync_deploy.py: deploy/ follows the topology -------------------------------------


def _sync_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "sync_deploy", ROOT / "scripts" / "sync_deploy.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deploy_files_match_a_fresh_sync() -> None:
    sync = _sync_module()
    assert sync.EMBEDDED == EMBEDDED
    stale = sorted(str(p.relative_to(ROOT)) for p in sync.plan(ROOT, TOPOLOGY))
    assert not stale, f"deploy/ is stale ({', '.join(stale)}); run: python scripts/sync_deploy.py"


def test_sync_adds_a_new_subscriber_and_removes_a_gone_one_everywhere(tmp_path: Path) -> None:
    sync = _sync_module()
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    raw = yaml.safe_load(TOPOLOGY.read_text())
    raw["subscribers"]["loyalty"] = {
        "handlers": "subscribers.loyalty.handlers:router",
        "queue": "loyalty-points",
        "bindings": [{"exchange": "events", "keys": ["order.placed"]}],
    }
    del raw["subscribers"]["invoicing"]
    (tmp_path / "topology").mkdir()
    path = tmp_path / "topology" / "topology.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert sync.main(["--root", str(tmp_path), "--topology", str(path)]) == 0
    assert sync.plan(tmp_path, path) == {}, "a second run changes nothing"

    deploy, k8s = tmp_path / "deploy", tmp_path / "deploy" / "k8s"
    services = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]
    assert services["loyalty"]["command"] == ["run", "loyalty", "--metrics-port", METRICS_PORT]
    assert services["loyalty"]["environment"]["BUS_URL"].startswith("amqp://${")
    assert "invoicing" not in services and "invoices:/var/lib/invoices" not in str(services)
    assert services["email"]["environment"]["SMTP_URL"] == "smtp://mailpit:1025", "kept as is"
    assert "loyalty" in services["prometheus"]["depends_on"]
    assert "invoicing" not in services["prometheus"]["depends_on"]
    prometheus = (deploy / "prometheus" / "prometheus.yml").read_text()
    assert '"loyalty:9100"' in prometheus and "invoicing" not in prometheus
    assert not (k8s / "invoicing.yaml").exists()
    manifests = list(yaml.safe_load_all((k8s / "loyalty.yaml").read_text()))
    assert [d["kind"] for d in manifests] == ["Deployment", "PodDisruptionBudget"]
    for d in manifests:
        kv.validate(d, K8S_VERSION, strict=True)
    resources = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    assert "loyalty.yaml" in resources and "invoicing.yaml" not in resources
    scaled = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((k8s / "keda.yaml").read_text())
        if d["kind"] == "ScaledObject"
    }
    assert "invoicing" not in scaled
    assert scaled["loyalty"]["spec"]["triggers"][0]["metadata"]["queueName"] == "loyalty-points"
    assert '"loyalty-points"' in (deploy / "rabbitmq" / "definitions.json").read_text()
    assert (k8s / "topology.yaml").read_text() == path.read_text()


def test_a_new_subscriber_is_told_the_seven_deploy_files_it_needs() -> None:
    gaps = deploy_gaps(["loyalty"])
    assert [g.split(":")[0] for g in gaps] == [
        "deploy/compose.yaml", "deploy/prometheus/prometheus.yml", "deploy/k8s/loyalty.yaml",
        "deploy/k8s/kustomization.yaml", "deploy/k8s/keda.yaml",
        "deploy/rabbitmq/definitions.json", "deploy/k8s/topology.yaml",
    ], gaps  # fmt: skip
