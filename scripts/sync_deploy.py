#!/usr/bin/env python3
"""Bring deploy/ in line with topology/topology.yaml: one command after adding or removing a
subscriber.

    python scripts/sync_deploy.py           # write the changes, list the files it touched
    python scripts/sync_deploy.py --check   # change nothing; exit 1 and list what is stale

For each subscriber that runs as its own service (`bus run NAME`) it adds what is missing, from
the same template as the others: a compose service (and Prometheus's `depends_on` entry), a
Prometheus scrape target, `deploy/k8s/NAME.yaml` (Deployment and PodDisruptionBudget), its line
in kustomization.yaml and a KEDA ScaledObject. What belongs to a subscriber the topology no
longer declares is removed. What is already there is left as written (hand-added environment,
comments, replica counts). The two generated files are rewritten: rabbitmq/definitions.json
(`bus topology export --format definitions`) and k8s/topology.yaml (a copy of the topology).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from bus.topology import export
from bus.topology.model import Subscriber, Topology, load

ROOT = Path(__file__).resolve().parents[1]
METRICS_PORT = 9100
# Subscribers that run inside another process (subscriber -> its host), not as services.
EMBEDDED = {"orders": "api"}

COMPOSE_SERVICE = """\
  {name}:
    <<: *subscriber
    command: ["run", "{name}", "--metrics-port", "{port}"]
    environment:
      <<: *bus-env
"""

PROMETHEUS_TARGET = """\
      - targets: ["{name}:{port}"]
        labels: {{service: {name}}}
"""

SCALED_OBJECT = """\
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: bus
    app.kubernetes.io/component: {name}
spec:
  scaleTargetRef:
    name: {name}
  minReplicaCount: 1
  maxReplicaCount: 10
  pollingInterval: 15
  cooldownPeriod: 300
  triggers:
    - type: rabbitmq
      metadata:
        protocol: amqp
        queueName: {queue}
        mode: QueueLength
        value: "200"  # target ready messages per replica
      authenticationRef:
        name: bus-rabbitmq
"""

K8S_SUBSCRIBER = """\
# The {name} subscriber: its Deployment and PodDisruptionBudget.
# Replicas are left to KEDA (keda.yaml), which scales on the length of queue `{queue}`.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: bus
    app.kubernetes.io/component: {name}
spec:
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      app.kubernetes.io/name: bus
      app.kubernetes.io/component: {name}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        app.kubernetes.io/name: bus
        app.kubernetes.io/component: {name}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "{port}"
        prometheus.io/path: /metrics
    spec:
      # SIGTERM stops consuming and drains in-flight handlers for BUS_GRACE_PERIOD (30 s),
      # well inside the 40 s before the kubelet's SIGKILL.
      terminationGracePeriodSeconds: 40
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: {name}
          image: bus
          args: ["run", "{name}", "--metrics-port", "{port}"]
          ports:
            - name: metrics
              containerPort: {port}
              protocol: TCP
          env:
            - name: BUS_URL
              valueFrom:
                secretKeyRef:
                  name: bus-secrets
                  key: BUS_URL
            - name: BUS_STORE_URL
              valueFrom:
                secretKeyRef:
                  name: bus-secrets
                  key: BUS_STORE_URL
            - name: BUS_TOPOLOGY
              value: "/etc/bus/topology.yaml"
            - name: BUS_GRACE_PERIOD
              value: "30"
            - name: BUS_LOG_FORMAT
              value: "json"
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            initialDelaySeconds: 10
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          resources:
            requests:
              cpu: 100m
              memory: 128Mi
            limits:
              memory: 256Mi
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          volumeMounts:
            - name: topology
              mountPath: /etc/bus
              readOnly: true
            - name: state  # default sqlite stores (.bus/) when no PostgreSQL URL is set
              mountPath: /app/.bus
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: topology
          configMap:
            name: bus-topology
        - name: state
          emptyDir: {{}}
        - name: tmp
          emptyDir: {{}}
---
# Voluntary evictions (node drains) take at most one {name} pod at a time, even at 1 replica.
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: bus
    app.kubernetes.io/component: {name}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: bus
      app.kubernetes.io/component: {name}
"""


def services(topology: Topology) -> list[Subscriber]:
    """The subscribers that run as services of their own, in the file's order."""
    return [s for s in topology.subscribers() if s.name not in EMBEDDED]


def _block(lines: list[str], start: int, indent: int) -> int:
    """The index after the block that starts at *start*: up to the next line indented at most
    *indent* spaces (blank lines before it belong to the block)."""
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        end += 1
    return end


def _run_target(spec: object) -> str | None:
    """NAME when a compose service or a k8s container runs `bus run NAME`."""
    if isinstance(spec, list) and spec[:1] == ["run"] and len(spec) > 1:
        return str(spec[1])
    return None


def compose(text: str, subs: list[Subscriber]) -> str:
    names = [s.name for s in subs]
    doc = yaml.safe_load(text)
    ran = {n: _run_target(svc.get("command")) for n, svc in doc["services"].items()}
    have = [n for n, target in ran.items() if target == n]
    lines = text.splitlines(keepends=True)
    for name in [n for n in have if n not in names]:  # gone from the topology
        start = _find(lines, name)
        del lines[start : _block(lines, start, 2)]
    missing = [n for n in names if n not in have]
    if missing:  # after the last subscriber service (or the topology job)
        last = [n for n in have if n in names]
        at = _block(lines, _find(lines, last[-1] if last else "topology"), 2)
        new = "".join(COMPOSE_SERVICE.format(name=n, port=METRICS_PORT) + "\n" for n in missing)
        lines[at:at] = new.splitlines(keepends=True)
    return _prometheus_depends_on("".join(lines), names)


def _find(lines: list[str], service: str) -> int:
    pattern = re.compile(rf"^  {re.escape(service)}:(\s|$)")
    return next(i for i, line in enumerate(lines) if pattern.match(line))


def _prometheus_depends_on(text: str, names: list[str]) -> str:
    """The Prometheus service waits for every subscriber service, in the file's order."""
    lines = text.splitlines(keepends=True)
    start = _find(lines, "prometheus")
    end = _block(lines, start, 2)
    head = next(i for i in range(start, end) if lines[i].strip() == "depends_on:")
    items = _block(lines, head, 4)
    while items > head + 1 and not lines[items - 1].strip():
        items -= 1
    lines[head + 1 : items] = [f"      - {n}\n" for n in names]
    return "".join(lines)


def prometheus(text: str, subs: list[Subscriber]) -> str:
    names = [s.name for s in subs]
    target = re.compile(rf'^      - targets: \["([^":]+):{METRICS_PORT}"\]\n$')
    lines = text.splitlines(keepends=True)
    have = []
    i = 0
    while i < len(lines):
        m = target.match(lines[i])
        if m and m.group(1) not in names:
            del lines[i : i + 2]  # its target and its labels
            continue
        if m:
            have.append((m.group(1), i))
        i += 1
    missing = [n for n in names if n not in {h for h, _ in have}]
    if missing:
        at = have[-1][1] + 2 if have else _after(lines, "static_configs:")
        new = "".join(PROMETHEUS_TARGET.format(name=n, port=METRICS_PORT) for n in missing)
        lines[at:at] = new.splitlines(keepends=True)
    return "".join(lines)


def _after(lines: list[str], marker: str) -> int:
    return next(i for i, line in enumerate(lines) if line.strip() == marker) + 1


def keda(text: str, subs: list[Subscriber]) -> str:
    names = [s.name for s in subs]
    docs = text.split("\n---\n")
    kept = []
    have = set()
    for doc in docs:
        parsed = yaml.safe_load(doc)
        if isinstance(parsed, dict) and parsed.get("kind") == "ScaledObject":
            name = parsed["metadata"]["name"]
            if name not in names:
                continue
            have.add(name)
        kept.append(doc.rstrip("\n"))
    kept += [
        SCALED_OBJECT.format(name=s.name, queue=s.queue).rstrip("\n")
        for s in subs
        if s.name not in have
    ]
    return "\n---\n".join(kept) + "\n"


def k8s_subscriber_files(k8s: Path) -> dict[str, Path]:
    """Subscriber name -> the manifest whose Deployment runs `bus run NAME`."""
    found = {}
    for path in sorted(k8s.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
                continue
            for c in doc["spec"]["template"]["spec"]["containers"]:
                name = _run_target(c.get("args"))
                if name is not None and name == doc["metadata"]["name"]:
                    found[name] = path
    return found


def kustomization(text: str, files: list[str], gone: list[str]) -> str:
    lines = text.splitlines(keepends=True)
    lines = [ln for ln in lines if ln.strip() not in {f"- {g}" for g in gone}]
    listed = {ln.strip()[2:] for ln in lines if ln.startswith("  - ")}
    missing = [f for f in files if f not in listed]
    if missing:
        start = _after(lines, "resources:")
        end = start
        while end < len(lines) and lines[end].startswith("  - "):
            end += 1
        anchor = next(
            (i + 1 for i in range(end - 1, start - 1, -1) if lines[i].strip()[2:] in files),
            end,
        )
        lines[anchor:anchor] = [f"  - {f}\n" for f in missing]
    return "".join(lines)


def plan(root: Path, topology_path: Path) -> dict[Path, str | None]:
    """Each deploy file whose content would change -> its new text (None: delete it)."""
    topology = load(topology_path)
    subs = services(topology)
    deploy = root / "deploy"
    k8s = deploy / "k8s"
    want: dict[Path, str | None] = {}
    on_disk = k8s_subscriber_files(k8s)
    gone = [path for name, path in on_disk.items() if name not in {s.name for s in subs}]
    for path in gone:
        want[path] = None
    for s in subs:
        if s.name not in on_disk:
            path = k8s / f"{s.name}.yaml"
            want[path] = K8S_SUBSCRIBER.format(name=s.name, queue=s.queue, port=METRICS_PORT)
    files = [on_disk.get(s.name, k8s / f"{s.name}.yaml").name for s in subs]
    edits = {
        deploy / "compose.yaml": lambda t: compose(t, subs),
        deploy / "prometheus" / "prometheus.yml": lambda t: prometheus(t, subs),
        k8s / "keda.yaml": lambda t: keda(t, subs),
        k8s / "kustomization.yaml": lambda t: kustomization(t, files, [p.name for p in gone]),
    }
    for path, edit in edits.items():
        want[path] = edit(path.read_text())
    want[deploy / "rabbitmq" / "definitions.json"] = export.to_json(export.definitions(topology))
    want[k8s / "topology.yaml"] = topology_path.read_text()
    return {
        path: text
        for path, text in want.items()
        if (text is None and path.exists())
        or (text is not None and (not path.exists() or path.read_text() != text))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    parser.add_argument("--topology", type=Path, help="default: ROOT/topology/topology.yaml")
    args = parser.parse_args(argv)
    topology = args.topology or args.root / "topology" / "topology.yaml"
    changes = plan(args.root, topology)
    for path, text in changes.items():
        where = path.relative_to(args.root)
        if args.check:
            print(f"stale: {where}")
        elif text is None:
            path.unlink()
            print(f"removed {where}")
        else:
            path.write_text(text)
            print(f"wrote {where}")
    if args.check and changes:
        print("run: python scripts/sync_deploy.py", file=sys.stderr)
        return 1
    if not changes:
        print("deploy/ matches the topology")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
