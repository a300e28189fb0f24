"""A product's own ASGI app (FastAPI), to serve beside captify-ws on one port."""

from __future__ import annotations

from fastapi import FastAPI

from captify_ws import create_app

app = FastAPI()


@app.get("/api/hello")
async def hello() -> dict[str, str]:
    return {"hello": "from the product"}


# The README's "mount captify-ws in your app" example, verbatim.
mounted = FastAPI()


@mounted.get("/api/hello")
async def mounted_hello() -> dict[str, str]:
    return {"hello": "from the mounting app"}


captify = create_app()
mounted.mount("/", captify)
