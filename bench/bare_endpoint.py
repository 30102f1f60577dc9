"""The serving benchmark's yardstick: a FastAPI endpoint that parses the request's JSON body and
answers a constant, with no model, served exactly as the serving image serves its app.

``bench/serving_bench.py`` runs it inside the serving image (same Python, uvicorn, uvloop,
httptools, orjson and server settings, through ``asgard_serving.__main__``), so the image's
req/s and p99 against it measure what the work between the socket and the model costs.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()
ANSWER = orjson.dumps({"predictions": [0]})


@app.post("/invocations")
async def invocations(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(ANSWER, media_type="application/json")


if __name__ == "__main__":
    from asgard_serving.__main__ import main

    main("bare_endpoint:app")
