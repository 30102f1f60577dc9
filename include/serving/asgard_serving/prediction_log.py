"""Prediction logging off the request path, for ``monitor_model``.

A request only appends to an in-memory queue; one background thread drains it every
``flush_seconds`` into a JSON-lines file per batch: in a local folder (written under a temporary
name and renamed) or under an ``s3://bucket/prefix`` (one PUT per batch; S3 never shows half an
object), so a reader never sees half a batch. When the queue is full the newest records are
dropped and counted: serving never waits for the log. The queue is bounded in rows (a request of
100,000 rows weighs what it holds), so the memory the log takes is bounded whatever the requests.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

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
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, prediction_ids: list[str], columns: dict[str, list], result: dict[str, Any]) -> None:
        """Queue one request's inputs and outputs (cheap: no copy, no I/O), unless the queue is full."""
        rows = len(prediction_ids)
        with self._lock:
            if self._queued_rows + rows > self.max_queued_rows:
                self.dropped += 1
                return
            self._queued_rows += rows
        self._queue.put_nowait((time.time(), prediction_ids, columns, result))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._flush(self._drain())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_seconds)
            self._flush(self._drain())

    def _drain(self) -> list:
        batch = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                with self._lock:
                    self._queued_rows -= sum(len(ids) for _, ids, _, _ in batch)
                return batch

    def _flush(self, batch: list) -> None:
        if not batch:
            return
        lines = []
        for logged_at, ids, columns, result in batch:
            probabilities = result.get("probabilities")
            for row, prediction_id in enumerate(ids):
                record = {
                    "prediction_id": prediction_id,
                    "logged_at": logged_at,
                    **self.model,
                    "features": {name: values[row] for name, values in columns.items()},
                    "prediction": result["predictions"][row],
                }
                if probabilities is not None:
                    record["probabilities"] = probabilities[row]
                lines.append(json.dumps(record, separators=(",", ":")))
        name = f"predictions-{int(time.time() * 1000)}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        body = ("\n".join(lines) + "\n").encode()
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
            log.error("could not write %d logged predictions: %s", len(lines), error)
        if self.dropped:
            log.warning("prediction log queue was full: %d requests were not logged", self.dropped)
            self.dropped = 0
