"""Prediction logging off the request path, for ``monitor_model``.

A request appends one JSON line to an in-memory buffer: its id and rows in columns (``request_id``,
``rows``, ``features``, ``predictions``, ``probabilities``; row ``i``'s prediction id is
``<request_id>-<i>``), serialized by one ``orjson`` call. That costs
a 1-row request about half a microsecond, and the buffer is one growing ``bytearray``, which the
garbage collector never walks: a queue of objects for every row is what made collections, and a
flush that formats each row in Python, stall requests for tens of milliseconds under load (and
a queue of one ``bytes`` per request cost four times as much as the buffer, in allocations).

One background thread drains the queue every ``flush_seconds`` into a JSON-lines file per batch:
in a local folder (written under a temporary name and renamed) or under an ``s3://bucket/prefix``
(one PUT per batch; S3 never shows half an object), so a reader never sees half a batch. When the
queue is full the newest requests are dropped and counted: serving never waits for the log. The
queue is bounded in bytes and in rows, so the memory the log takes, and what one batch writes, are
bounded whatever the requests; a request holding a string value longer than ``max_value_chars`` is
not logged either (a category is short; a long string is a payload that would fill the disk). What is
not logged is counted by reason (``lines``: ``asgard_prediction_log_dropped_requests_total`` in
``/metrics``), never written in part. ``asgard.monitoring.windows`` reads the lines back as rows.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("asgard_serving.prediction_log")

# Why a request was not logged: the queue is full (or its line alone is larger than the queue), a
# string value is longer than the log takes, or its batch could not be written (disk, bucket).
DROP_REASONS = ("queue_full", "value_too_long", "write_failed")


class PredictionLog:
    def __init__(
        self,
        destination: str | os.PathLike,
        *,
        model: dict[str, str],
        flush_seconds: float = 5.0,
        max_rows: int = 10_000,
        max_queued_rows: int = 100_000,
        max_queued_bytes: int = 64_000_000,
        max_value_chars: int = 1000,
        string_columns: Iterable[str] = (),
    ) -> None:
        destination = str(destination)
        if destination.startswith("s3://"):
            import boto3  # credentials and endpoint from the environment (IRSA, AWS_ENDPOINT_URL, ...)

            self.bucket, _, prefix = destination[len("s3://") :].partition("/")
            self.prefix = prefix.strip("/")
            self.s3 = boto3.client("s3")
            self.folder = None
        else:
            self.s3 = None
            self.folder = Path(destination)
            self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.max_queued_rows = max_queued_rows
        self.max_queued_bytes = max_queued_bytes
        self.max_value_chars = max_value_chars
        self.string_columns = tuple(string_columns)  # the only columns whose values can be long
        self.dropped = dict.fromkeys(DROP_REASONS, 0)  # requests not logged, since the start
        self.written_bytes = 0
        self._unreported = 0  # requests not logged since the last warning
        self._queued_rows = 0
        self._queued_requests = 0
        self._lock = threading.Lock()
        self._lines = bytearray()  # the queued lines, each ending in a newline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, request_id: str, columns: dict[str, list], result: dict[str, Any]) -> None:
        """Queue one request's inputs and outputs as one line (no I/O), unless the queue is full."""
        rows = len(result["predictions"])
        if self._queued_rows + rows > self.max_queued_rows:  # read without the lock: a hint is enough here
            self._drop("queue_full")
            return
        line = {
            "logged_at": time.time(),
            **self.model,
            "request_id": request_id,
            "rows": rows,
            "features": columns,
            "predictions": result["predictions"],
        }
        if "probabilities" in result:
            line["probabilities"] = result["probabilities"]
        serialized = orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
        # A line no longer than the limit holds no longer value: most lines are not looked into.
        if len(serialized) > self.max_value_chars and self._longest_string(columns) > self.max_value_chars:
            self._drop("value_too_long")
            return
        with self._lock:
            if len(self._lines) + len(serialized) > self.max_queued_bytes:
                self._drop_locked("queue_full")
                return
            self._lines += serialized
            self._queued_rows += rows
            self._queued_requests += 1

    def lines(self) -> list[str]:
        """The log's counters, in Prometheus' text format (``/metrics``)."""
        dropped = "asgard_prediction_log_dropped_requests_total"
        written = "asgard_prediction_log_written_bytes_total"
        return [
            f"# HELP {dropped} Prediction requests answered but not logged, by reason.",
            f"# TYPE {dropped} counter",
            *(f'{dropped}{{reason="{reason}"}} {count}' for reason, count in self.dropped.items()),
            f"# HELP {written} Bytes of prediction log written (files or S3 objects).",
            f"# TYPE {written} counter",
            f"{written} {self.written_bytes}",
        ]

    def _longest_string(self, columns: dict[str, list]) -> int:
        lengths = (max(map(len, filter(None, columns.get(name, ()))), default=0) for name in self.string_columns)
        return max(lengths, default=0)

    def _drop(self, reason: str, requests: int = 1) -> None:
        with self._lock:
            self._drop_locked(reason, requests)

    def _drop_locked(self, reason: str, requests: int = 1) -> None:
        self.dropped[reason] += requests
        self._unreported += requests

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._flush(self._drain())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_seconds)
            self._flush(self._drain())

    def _drain(self) -> tuple[int, int, bytes]:
        with self._lock:
            requests, rows, lines = self._queued_requests, self._queued_rows, self._lines
            self._queued_requests, self._queued_rows, self._lines = 0, 0, bytearray()
        return requests, rows, bytes(lines)

    def _flush(self, batch: tuple[int, int, bytes]) -> None:
        requests, rows, body = batch
        if not body:
            self._report_drops()
            return
        name = f"predictions-{int(time.time() * 1000)}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        try:
            if self.s3 is not None:
                key = f"{self.prefix}/{name}" if self.prefix else name
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson")
            else:
                partial = self.folder / f".{name}.partial"
                try:
                    partial.write_bytes(body)
                    os.replace(partial, self.folder / name)
                finally:
                    partial.unlink(missing_ok=True)
        except Exception as error:  # a full disk or an unreachable bucket must not take serving down
            log.error("could not write %d logged predictions: %s", rows, error)
            self._drop("write_failed", requests)
        else:
            self.written_bytes += len(body)
        self._report_drops()

    def _report_drops(self) -> None:
        with self._lock:
            unreported, self._unreported = self._unreported, 0
        if unreported:
            counts = ", ".join(f"{reason} {count}" for reason, count in self.dropped.items())
            log.warning("%d prediction requests were not logged (since the start: %s)", unreported, counts)
