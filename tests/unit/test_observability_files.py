"""The Grafana dashboard and the Prometheus alerts speak only of metrics the bus exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from bus.metrics import Metrics
from tests.conftest import tool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "bus.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def exported_names() -> set[str]:
    """Every series name a fresh `Metrics` registry can export, suffixes included."""
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", " ", text)  # numbers
    names = set()
    for token in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if not text[token.end() :].lstrip().startswith("("):  # "f(" is a function call
            names.add(token.group())
    return names - PROMQL_KEYWORDS


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return [p for p in out if p.get("type") != "row"]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_metric_name_extractor_ignores_functions_labels_and_variables() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, subscriber) (rate(bus_handler_seconds_bucket{subscriber=~"$sub"}[$__rate_interval])))'
        ' / on (queue) max(bus_queue_messages{queue=~".+[.]dlq"}) > 0.05 and absent(up)'
    )
    assert metric_names(expr) == {"bus_handler_seconds_bucket", "bus_queue_messages", "up"}


def test_the_exported_names_include_the_suffixed_series() -> None:
    names = exported_names()
    for name in (
        "bus_published_total",
        "bus_consumed_total",
        "bus_handler_seconds_bucket",
        "bus_handler_seconds_count",
        "bus_handler_seconds_sum",
        "bus_queue_messages",
        "bus_dlq_oldest_message_age_seconds",
        "bus_publish_confirm_seconds_bucket",
        "bus_ready",
    ):
        assert name in names, f"{name} missing from {sorted(names)}"


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash["title"] and dash["uid"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    for p in panels(dash):
        assert p["datasource"]["uid"] in ("${DS_PROMETHEUS}", "prometheus"), p["title"]


def test_every_dashboard_panel_has_a_title_and_a_target() -> None:
    for p in panels(dashboard()):
        assert p.get("title"), f"panel {p.get('id')} has no title"
        exprs = [t.get("expr") for t in p.get("targets", [])]
        assert exprs and all(exprs), f"panel {p['title']!r} has no query"


def test_dashboard_covers_the_metrics_the_issue_asks_for() -> None:
    exprs = " ".join(t["expr"] for p in panels(dashboard()) for t in p["targets"])
    for name in (
        "bus_published_total",
        "bus_consumed_total",
        "bus_handler_seconds_bucket",
        "bus_queue_messages",
        "bus_dlq_oldest_message_age_seconds",
        "bus_ready",
        "bus_publish_confirm_seconds_bucket",
    ):
        assert name in exprs, f"no dashboard panel shows {name}"


def test_dashboard_queries_use_only_exported_metrics() -> None:
    known = exported_names()
    for p in panels(dashboard()):
        for t in p["targets"]:
            names = metric_names(t["expr"])
            assert names, f"{p['title']!r}: no metric in {t['expr']!r}"
            assert names <= known, f"{p['title']!r}: unknown metric(s) {sorted(names - known)}"


def test_alert_rules_use_only_exported_metrics_and_are_labelled() -> None:
    known = exported_names()
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "BusDLQGrowing",
        "BusDLQOldMessage",
        "BusRetryBacklogHigh",
        "BusSubscriberNotReady",
        "BusHandlerErrorRate",
    }
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
        assert names <= known, f"{rule['alert']}: unknown metric(s) {sorted(names - known)}"
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"].get("summary"), f"{rule['alert']} has no summary"
        assert rule["annotations"].get("description"), f"{rule['alert']} has no description"


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = tool("promtool", "the alert rules (apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def firing(labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description},
    }


RULE_TESTS: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            # shop.dlq grows after 5m; mail.dlq holds 3 messages steadily; two replicas each
            *(
                {
                    "series": f'bus_queue_messages{{queue="shop.dlq", instance="{i}"}}',
                    "values": "0x5 1+1x20",
                }
                for i in ("a", "b")
            ),
            {"series": 'bus_queue_messages{queue="mail.dlq", instance="a"}', "values": "3x25"},
            {
                "series": 'bus_queue_messages{queue="shop.retry.1m", instance="a"}',
                "values": "600x30",
            },
            # shop: both replicas down after 5m; mail: one of two replicas down
            {"series": 'bus_ready{subscriber="shop", instance="a"}', "values": "1x5 0x10"},
            {"series": 'bus_ready{subscriber="shop", instance="b"}', "values": "1x5 0x10"},
            {"series": 'bus_ready{subscriber="mail", instance="a"}', "values": "1x15"},
            {"series": 'bus_ready{subscriber="mail", instance="b"}', "values": "1x5 0x10"},
            # shop fails 10% of deliveries, mail 2%
            {
                "series": 'bus_consumed_total{subscriber="shop", type="t", outcome="ok"}',
                "values": "0+90x30",
            },
            {
                "series": 'bus_consumed_total{subscriber="shop", type="t", outcome="retried"}',
                "values": "0+10x30",
            },
            {
                "series": 'bus_consumed_total{subscriber="mail", type="t", outcome="ok"}',
                "values": "0+98x30",
            },
            {
                "series": 'bus_consumed_total{subscriber="mail", type="t", outcome="dead"}',
                "values": "0+2x30",
            },
            {
                "series": 'bus_dlq_oldest_message_age_seconds{queue="shop.dlq"}',
                "values": "3000+60x30",
            },
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "BusDLQGrowing", "exp_alerts": []},
            {
                "eval_time": "20m",
                "alertname": "BusDLQGrowing",
                "exp_alerts": [
                    firing(
                        {"severity": "warning", "queue": "shop.dlq"},
                        "Messages are being parked in shop.dlq",
                        "shop.dlq grew by 15 messages in the last 15 minutes. Handlers are "
                        "rejecting events or exhausting their retries. Inspect with `bus dlq "
                        "list <subscriber>`, fix the cause, then `bus dlq replay`.",
                    )
                ],
            },
            {
                "eval_time": "12m",
                "alertname": "BusSubscriberNotReady",
                "exp_alerts": [
                    firing(
                        {"severity": "critical", "subscriber": "shop"},
                        "Subscriber shop is not consuming",
                        "No replica of shop has been connected and consuming for 2 minutes. "
                        "Its queue is filling up; check the pods' /readyz and logs, and "
                        "RabbitMQ's availability.",
                    )
                ],
            },
            {
                "eval_time": "25m",
                "alertname": "BusHandlerErrorRate",
                "exp_alerts": [
                    firing(
                        {"severity": "warning", "subscriber": "shop"},
                        "Handlers of shop fail on 10% of deliveries",
                        "More than 5% of the deliveries to shop ended retried or dead over the "
                        "last 10 minutes. See the bus-exception-* headers in its retry queues "
                        "and DLQ (`bus dlq list shop`) and the handler's logs.",
                    )
                ],
            },
            {
                "eval_time": "25m",
                "alertname": "BusDLQOldMessage",
                "exp_alerts": [
                    firing(
                        {"severity": "warning", "queue": "shop.dlq"},
                        "shop.dlq has held a message for over an hour",
                        "The oldest message in shop.dlq failed 1h 15m 0s ago and nobody has "
                        "replayed or purged it. Parked events are never dropped: someone must "
                        "decide (`bus dlq show`, `bus dlq replay` or `bus dlq purge`).",
                    )
                ],
            },
            {
                "eval_time": "20m",
                "alertname": "BusRetryBacklogHigh",
                "exp_alerts": [
                    firing(
                        {"severity": "warning", "queue": "shop.retry.1m"},
                        "Retry backlog in shop.retry.1m is high",
                        "shop.retry.1m has held more than 500 messages waiting for a retry for "
                        "15 minutes (600 now). A dependency of the handler is probably failing; "
                        "those events are delayed and will reach the DLQ once the ladder ends.",
                    )
                ],
            },
            {"eval_time": "20m", "alertname": "BusMetricsAbsent", "exp_alerts": []},
        ],
    },
    {
        "interval": "1m",
        "input_series": [{"series": 'bus_published_total{type="t"}', "values": "0+1x10"}],
        "alert_rule_test": [
            {
                "eval_time": "6m",
                "alertname": "BusMetricsAbsent",
                "exp_alerts": [
                    firing(
                        {"severity": "critical"},
                        "No bus subscriber reports metrics",
                        "Prometheus has scraped no bus_ready series for 5 minutes: every "
                        "subscriber is down, or scraping of their /metrics endpoints is broken.",
                    )
                ],
            }
        ],
    },
]


RULE_TESTS.append(
    {
        "interval": "1m",
        # relay-1 blocked from 2m to 6m; relay-2 only for one scrape, at 3m
        "input_series": [
            {"series": 'bus_broker_blocked{instance="relay-1"}', "values": "0x1 1x4 0x5"},
            {"series": 'bus_broker_blocked{instance="relay-2"}', "values": "0x2 1 0x7"},
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "BusBrokerBlocked", "exp_alerts": []},
            {
                "eval_time": "5m",
                "alertname": "BusBrokerBlocked",
                "exp_alerts": [
                    firing(
                        {"severity": "warning", "instance": "relay-1"},
                        "RabbitMQ has blocked publishing from relay-1 for over a minute",
                        "The broker sent connection.blocked: a memory or disk alarm is in effect "
                        "(the process's WARNING line gives the node and the reason). Publishes "
                        "wait, nothing is lost: relays keep rows in the outbox, subscribers that "
                        "publish stall. Free memory or disk on the node, or raise its watermark; "
                        "publishing resumes by itself.",
                    )
                ],
            },
            {"eval_time": "9m", "alertname": "BusBrokerBlocked", "exp_alerts": []},
        ],
    }
)


def test_alerts_fire_on_trouble_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    """`promtool test rules` on synthetic series: steady DLQs, one replica down and a 2% error
    rate raise nothing; growth, all replicas down, 10% errors, old DLQ heads do."""
    promtool = tool("promtool", "the alerts' rule tests (apt-get install prometheus)")
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(
        yaml.safe_dump(
            {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": RULE_TESTS},
            sort_keys=False,
        )
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
