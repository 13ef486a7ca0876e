"""A Grafana dashboard on rollcall's metrics (service/metrics.py), printed by `rollcall grafana`
for Grafana's "Import dashboard" (it asks for the Prometheus data source on import).

Counters are summed over replicas (no worker label is needed: each replica's workers are
already summed); figures read from the database (views' lag, dead letters, quarantined) are the
same on every replica, so they are taken with max, never summed.
"""

from __future__ import annotations

from typing import Any, Final

_DS: Final = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# (title, unit, [(expression, legend)], width)
_PANELS: Final[list[tuple[str, str, list[tuple[str, str]], int]]] = [
    (
        "Deliveries answered per second, by outcome",
        "reqps",
        [("sum by (outcome) (rate(rollcall_deliveries_total[5m]))", "{{outcome}}")],
        12,
    ),
    (
        "Accepted deliveries per second, by JTE event",
        "reqps",
        [
            (
                'sum by (event) (rate(rollcall_deliveries_total{outcome="accepted"}[5m]))',
                "{{event}}",
            )
        ],
        12,
    ),
    (
        "Refused requests per second, by reason",
        "reqps",
        [("sum by (reason) (rate(rollcall_rejections_total[5m]))", "{{reason}}")],
        12,
    ),
    (
        "Seconds since the last delivery, by JTE event",
        "s",
        [("time() - max by (event) (rollcall_last_delivery_timestamp_seconds)", "{{event}}")],
        12,
    ),
    (
        "View lag (seconds behind the store)",
        "s",
        [("max by (view) (rollcall_projection_lag_seconds)", "{{view}}")],
        8,
    ),
    (
        "View lag (deliveries not yet applied)",
        "short",
        [("max by (view) (rollcall_projection_lag_events)", "{{view}}")],
        8,
    ),
    (
        "Dead letters, failed views, quarantined",
        "short",
        [
            ("max by (view) (rollcall_projection_dead_letters)", "dead letters {{view}}"),
            ("max by (view) (rollcall_projection_failed)", "failed {{view}}"),
            ("max(rollcall_quarantined_deliveries)", "quarantined"),
        ],
        8,
    ),
    (
        "Intake queue depth",
        "short",
        [("sum(rollcall_intake_queue_depth)", "waiting for the store")],
        8,
    ),
    (
        "Deliveries per event-store transaction",
        "short",
        [
            (
                "histogram_quantile(0.5, sum by (le) (rate(rollcall_batch_size_bucket[5m])))",
                "median",
            ),
            (
                "histogram_quantile(0.95, sum by (le) (rate(rollcall_batch_size_bucket[5m])))",
                "p95",
            ),
        ],
        8,
    ),
    (
        "Event-store append time",
        "s",
        [
            (
                "histogram_quantile(0.99, sum by (le) (rate(rollcall_append_seconds_bucket[5m])))",
                "p99",
            )
        ],
        8,
    ),
    (
        "API response time p95, by route",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, route) "
                "(rate(rollcall_http_request_duration_seconds_bucket[5m])))",
                "{{route}}",
            )
        ],
        12,
    ),
    (
        "CPU and memory",
        "short",
        [
            (
                "sum by (instance) (rate(rollcall_worker_cpu_seconds[5m])) "
                "or sum by (instance) (rate(process_cpu_seconds_total[5m]))",
                "CPU cores {{instance}}",
            ),
            (
                "sum by (instance) (rollcall_worker_resident_memory_bytes) / 2^30 "
                "or sum by (instance) (process_resident_memory_bytes) / 2^30",
                "GiB resident {{instance}}",
            ),
        ],
        12,
    ),
]


def dashboard() -> dict[str, Any]:
    """The dashboard, in Grafana's import format."""
    panels = []
    x = y = 0
    for number, (title, unit, targets, width) in enumerate(_PANELS, 1):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(
            {
                "id": number,
                "type": "timeseries",
                "title": title,
                "datasource": _DS,
                "gridPos": {"x": x, "y": y, "w": width, "h": 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + i), "datasource": _DS, "expr": e, "legendFormat": f}
                    for i, (e, f) in enumerate(targets)
                ],
            }
        )
        x += width
    panels.append(
        {
            "id": len(panels) + 1,
            "type": "table",
            "title": "Running versions",
            "datasource": _DS,
            "gridPos": {"x": 0, "y": y + 8, "w": 24, "h": 4},
            "targets": [
                {
                    "refId": "A",
                    "datasource": _DS,
                    "expr": "rollcall_build_info",
                    "format": "table",
                    "instant": True,
                }
            ],
        }
    )
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "title": "rollcall",
        "uid": "rollcall-operator",
        "tags": ["rollcall"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": panels,
    }


def expressions() -> list[str]:
    """Every PromQL expression the dashboard draws (tests check their metrics exist)."""
    return [expr for _, _, targets, _ in _PANELS for expr, _ in targets] + ["rollcall_build_info"]
