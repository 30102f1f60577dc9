"""The ASGI app uvicorn imports in each worker."""

from asgard_serving.app import create_app

app = create_app()
