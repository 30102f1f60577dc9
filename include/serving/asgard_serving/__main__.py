"""``python -m asgard_serving``: run the app with uvicorn (``ASGARD_SERVING_WORKERS`` processes)."""

from __future__ import annotations

import os

import uvicorn


def main(app: str = "asgard_serving.main:app") -> None:
    """Serve ``app`` (an import string: each worker process imports it) as the image does."""
    uvicorn.run(
        app,
        host=os.environ.get("ASGARD_SERVING_HOST", "0.0.0.0"),
        port=int(os.environ.get("ASGARD_SERVING_PORT", "8080")),
        workers=int(os.environ.get("ASGARD_SERVING_WORKERS", "1")),
        access_log=False,
        log_level=os.environ.get("ASGARD_SERVING_LOG_LEVEL", "info"),
        # The whole request is read before it is answered: a slow client cannot hold a worker forever.
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
