"""Prometheus metrics of a server's sessions (GET /metrics), read from the sessions at each scrape.

A registry of its own per server (no process-wide state): two servers in one process, as in the tests, never mix
their series."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .sessions import Sessions

LABELS = ["host", "session"]


class SessionCollector:
    """Series for the statuses `statuses()` gives, one per host: (host label, Sessions.status())."""

    def __init__(self, statuses: Callable[[], list[tuple[str, dict]]]):
        self.statuses = statuses

    def collect(self):
        statuses = self.statuses()
        per_session = {
            "fps": GaugeMetricFamily("swl_session_fps", "frames per second presented", labels=LABELS),
            "frames": CounterMetricFamily("swl_session_frames", "frames presented", labels=LABELS),
            "lip_synced": CounterMetricFamily("swl_session_lip_synced_frames", "frames the model made",
                                              labels=LABELS),
            "late": CounterMetricFamily("swl_session_late_frames", "frames presented after their time",
                                        labels=LABELS),
            "skipped": CounterMetricFamily("swl_session_skipped_frames", "speech frames shown without the model to "
                                           "stay on time", labels=LABELS),
            "queue": GaugeMetricFamily("swl_session_queue_seconds", "speech waiting to be spoken", labels=LABELS),
        }
        latency = GaugeMetricFamily("swl_session_latency_seconds", "audio in to frame out, last 10 minutes",
                                    labels=[*LABELS, "quantile"])
        running = GaugeMetricFamily("swl_sessions", "sessions running", labels=["host"])
        room = GaugeMetricFamily("swl_sessions_capacity_left", "more sessions the measured load allows",
                                 labels=["host"])
        models = {
            "batches": CounterMetricFamily("swl_model_batches", "shared model calls", labels=["host", "model"]),
            "frames": CounterMetricFamily("swl_model_frames", "frames through the shared model",
                                          labels=["host", "model"]),
            "dropped": CounterMetricFamily("swl_model_dropped_frames", "frames answered too late to run",
                                           labels=["host", "model"]),
            "busy_seconds": CounterMetricFamily("swl_model_busy_seconds", "time spent in the model",
                                                labels=["host", "model"]),
        }
        for host, status in statuses:
            for sid, s in status["sessions"].items():
                for name in ("fps", "frames", "lip_synced", "late", "skipped"):
                    per_session[name].add_metric([host, sid], s[name])
                per_session["queue"].add_metric([host, sid], s["queue"]["seconds"])
                for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
                    value = s["latency_ms"]["input"][key]
                    if value is not None:
                        latency.add_metric([host, sid, quantile], value / 1000)
            running.add_metric([host], len(status["sessions"]))
            room.add_metric([host], status["capacity"]["sessions_left"])
            for model in status["models"]:
                for key, family in models.items():
                    family.add_metric([host, model["name"]], model[key])
        yield from per_session.values()
        yield latency
        yield running
        yield room
        yield from models.values()


def exposition_of(statuses: list[tuple[str, dict]]) -> tuple[bytes, str]:
    """(the Prometheus text for these hosts' statuses, its content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SessionCollector(lambda: statuses))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def exposition(sessions: Sessions) -> tuple[bytes, str]:
    """One server's sessions (host label "local")."""
    return exposition_of([("local", sessions.status())])
