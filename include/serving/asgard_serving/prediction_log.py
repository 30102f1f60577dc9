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
queue is bounded in rows (a request of 100,000 rows weighs what it holds), so the memory the log
takes is bounded whatever the requests. ``asgard.monitoring.windows`` reads the lines back as rows.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("asgard_serving.prediction_log")


class PredictionLog:
    def __init__(
        self,
        destination: str | os.PathLike,
        *,
        model: dict[str, str],
        flush_seconds: float = 5.0,
        max_rows: int = 10_000,
        max_queued_rows: int = 100_000,
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
        self.dropped = 0
        self.max_queued_rows = max_queued_rows
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._lines = bytearray()  # the queued lines, each ending in a newline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, request_id: str, columns: dict[str, list], result: dict[str, Any]) -> None:
        """Queue one request's inputs and outputs as one line (no I/O), unless the queue is full."""
        rows = len(result["predictions"])
        if self._queued_rows + rows > self.max_queued_rows:  # read without the lock: a hint is enough here
            self.dropped += 1
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
        with self._lock:
            self._lines += serialized
            self._queued_rows += rows

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._flush(self._drain())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_seconds)
            self._flush(self._drain())

    def _drain(self) -> tuple[int, bytes]:
        with self._lock:
            rows, lines = self._queued_rows, self._lines
            self._queued_rows, self._lines = 0, bytearray()
        return rows, bytes(lines)

    def _flush(self, batch: tuple[int, bytes]) -> None:
        rows, body = batch
        if not body:
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
        if self.dropped:
            log.warning("prediction log queue was full: %d requests were not logged", self.dropped)
            self.dropped = 0
