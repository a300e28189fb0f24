"""A product app for the log tests: a session endpoint for the session-proxy authenticator, and
a library that warns and logs while it is imported, as real libraries do."""

from __future__ import annotations

import logging
import warnings

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

warnings.warn("noisylib: the 'colour' option is deprecated", UserWarning, stacklevel=1)
logging.getLogger("noisylib").warning("noisylib: connected to nothing in particular")


async def session(request: Request) -> JSONResponse:
    if request.headers.get("cookie") == "session=good":
        return JSONResponse({"user": {"id": "u-1"}})
    return JSONResponse({}, status_code=401)


app = Starlette(routes=[Route("/api/session", session)])
