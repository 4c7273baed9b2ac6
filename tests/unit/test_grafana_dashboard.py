"""deploy/grafana/critique-sidecar.json queries only metrics the sidecar exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from critique_sidecar.core.ledger import UsageRecord
from critique_sidecar.core.observe import Denial
from critique_sidecar.observability.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/critique-sidecar.json"
_LABELS = re.compile(r"\{[^}]*\}|\b(?:by|without)\s*\([^)]*\)")
_NAME = re.compile(r"\b((?:critique|gen_ai)_[a-z0-9_]+)\b")


def queried_metrics() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return {name for e in exprs for name in _NAME.findall(_LABELS.sub("", e))}


def exposed_samples() -> set[str]:
    """Every sample name of a registry that has seen each kind of event once."""
    m = Metrics(CollectorRegistry(), process=False)
    m.admitted("m", ())
    m.denied(Denial("insufficient_credits", "a", "k", "m", None, 0.01))
    m.settled(UsageRecord("r", "a", "k", "m", 3, 4, 5, "0.05", "v", False, True, "ok", 10, 0, "d", "mo"))
    m.settled(UsageRecord("r2", "a", "k", "m", 3, 0, 5, "0.05", "v", False, False, "interrupted", 10, 0, "d", "mo"))
    m.stream_chunk("m", True, 0.2)
    m.stream_chunk("m", False, 0.01)
    m.store_call("settle", 0.001, True)
    return {s.name for f in text_string_to_metric_families(m.exposition().decode()) for s in f.samples}


def test_every_dashboard_metric_is_exposed() -> None:
    queried = queried_metrics()
    assert {"gen_ai_server_time_to_first_token_bucket", "gen_ai_client_token_usage_sum"} <= queried  # the parse works
    missing = queried - exposed_samples()
    assert not missing, f"the dashboard queries metrics the sidecar does not expose: {sorted(missing)}"


def test_dashboard_is_importable_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "critique-sidecar" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"])
