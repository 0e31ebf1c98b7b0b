"""Budget threshold events and counter states, and their delivery to a webhook off the call path.

A cap's ``alert_at`` thresholds are shares of its limit. When a counter's spent + held first reaches
one in a window, the guard records a mark in the ledger (atomically, so exactly one process of all
that share the ledger wins) and the winner emits the event; a counter's state follows from its marks
(:func:`agentguard_otel.ledger.base.counter_state`). Comparisons are exact: integers against a
Decimal's ratio.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from agentguard_otel.money import nano_to_usd

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 5.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF_SECONDS = (0.5, 2.0)  # before the second and the third attempt
WEBHOOK_QUEUE = 1000  # events waiting for delivery; past that, new ones are logged and dropped


def threshold_label(threshold: Decimal) -> str:
    """A threshold as a mark label: its exact text without trailing zeros (``0.8``, ``1``); never
    rounded, so two thresholds never share a label."""
    text = format(threshold, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def reached(thresholds: Iterable[tuple[Decimal, int, int]], used_nano: int, limit_nano: int) -> list[Decimal]:
    """The thresholds (each with its exact ratio, as ``Cap.thresholds`` gives them) that
    ``used / limit`` has reached, compared exactly (a zero limit is reached by anything)."""
    return [threshold for threshold, numerator, denominator in thresholds
            if used_nano * denominator >= numerator * limit_nano]


@dataclass(frozen=True)
class BudgetEvent:
    """One threshold reached by one counter in one window."""

    counter: str
    rule_id: str
    window: str
    window_start: str | None  # ISO 8601; None for a rolling window
    threshold: Decimal
    spent_nano: int
    held_nano: int
    limit_nano: int
    scope: Mapping[str, str | None]
    ts: float

    @property
    def utilization(self) -> float | None:
        """(spent + held) / limit; None for a zero limit (JSON has no infinity)."""
        return (self.spent_nano + self.held_nano) / self.limit_nano if self.limit_nano else None

    def as_json(self) -> dict[str, Any]:
        """The webhook's JSON object (USD amounts and shares are numbers for people and dashboards;
        the ledger and the comparison stay exact). ``spent_usd`` is spent + held, what the threshold
        is reached by; ``held_usd`` says how much of it is still held by calls in flight."""
        utilization = self.utilization
        return {
            "counter": self.counter, "rule_id": self.rule_id, "window": self.window,
            "window_start": self.window_start, "threshold": float(self.threshold),
            "utilization": None if utilization is None else round(utilization, 6),
            "spent_usd": nano_to_usd(self.spent_nano + self.held_nano), "held_usd": nano_to_usd(self.held_nano),
            "limit_usd": nano_to_usd(self.limit_nano), "scope": dict(self.scope),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.ts)),
        }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: urllib would follow it as a GET without the event."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


class WebhookSender:
    """Posts budget events to one URL from a worker thread: a timeout per attempt, bounded retries
    with backoff, never blocking the caller; what cannot be delivered is logged (by host: the URL
    itself may carry a token). Fork-safe: a child starts its own worker on its first event."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._host = urlsplit(url).hostname or "?"
        self._queue: queue.Queue[BudgetEvent | None] = queue.Queue(WEBHOOK_QUEUE)
        self._worker: threading.Thread | None = None
        self._pid = os.getpid()
        self._locks = {self._pid: threading.Lock()}  # per process: a fork may copy it held
        self._closed = False

    def _lock(self) -> threading.Lock:
        pid = os.getpid()
        lock = self._locks.get(pid)
        return lock if lock is not None else self._locks.setdefault(pid, threading.Lock())

    def send(self, event: BudgetEvent) -> None:
        with self._lock():
            if self._closed:
                logger.warning("agentguard: budget event for %s not delivered: the guard is closed", event.counter)
                return
            if self._pid != os.getpid():  # forked: the parent's queue and thread are not ours
                self._pid, self._queue, self._worker = os.getpid(), queue.Queue(WEBHOOK_QUEUE), None
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="agentguard-webhook", daemon=True)
                self._worker.start()
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                logger.warning("agentguard: budget event for %s not delivered to %s: %d events already wait",
                               event.counter, self._host, WEBHOOK_QUEUE)

    def close(self, timeout_seconds: float = WEBHOOK_TIMEOUT_SECONDS * WEBHOOK_ATTEMPTS) -> None:
        """Deliver what waits (within ``timeout_seconds``), then stop the worker."""
        with self._lock():
            self._closed = True
            worker = self._worker if self._pid == os.getpid() else None
        if worker is None:
            return
        with contextlib.suppress(queue.Full):  # the worker then stops once the queue is empty
            self._queue.put_nowait(None)
        worker.join(timeout_seconds)
        if worker.is_alive():
            logger.warning("agentguard: budget events still waiting for %s were not delivered", self._host)

    def _run(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._closed:
                    return
                continue
            if event is None:
                return
            self._deliver(event)

    def _deliver(self, event: BudgetEvent) -> None:
        body = json.dumps(event.as_json()).encode("utf-8")
        why = ""
        for attempt in range(WEBHOOK_ATTEMPTS):
            if attempt:
                time.sleep(WEBHOOK_BACKOFF_SECONDS[min(attempt, len(WEBHOOK_BACKOFF_SECONDS)) - 1])
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "User-Agent": "agentguard-otel"})
            try:
                with _OPENER.open(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}"
                if 300 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # refused, or redirected (following drops the body): asking again changes nothing
            except Exception as exc:  # a refused connection, a timeout, a reset: try again
                why = type(exc).__name__
        logger.warning("agentguard: budget event for %s (threshold %s) not delivered to %s: %s",
                       event.counter, threshold_label(event.threshold), self._host, why)


__all__ = ["BudgetEvent", "WebhookSender", "reached", "threshold_label"]
