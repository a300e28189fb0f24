"""What the bearer-key HTTP APIs share (``http_documents``, ``http_channels``,
``http_agents``, ``http_agent_sessions``, ``history/http``): the API-key gate around each
route, and integer query parameters.

Each API keeps its own error answers (their bodies differ: ``code`` 4400 on the channel routes,
400 on the history routes); these helpers take them as arguments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

#: ``CAPTIFY_WS_API_KEY``'s check (``app.py``): the refusal (401) or ``None``
CheckKey = Callable[[Request], "Response | None"]
Endpoint = Callable[[Request], Awaitable[Response]]
#: the answer to an exception a route raised
Answer = Callable[[Exception], Response]
#: the exception for a bad query parameter, given its message
BadQuery = Callable[[str], Exception]


def guard(check_key: CheckKey, endpoint: Endpoint, answer: Answer | None = None,
          catch: tuple[type[Exception], ...] = (Exception,)) -> Endpoint:
    """``endpoint`` behind the API key: ``check_key``'s refusal when it gives one, before
    anything else; otherwise the endpoint's response, or ``answer(exc)`` for an exception of
    a ``catch`` type (other exceptions, and every one without ``answer``, propagate)."""
    async def guarded(request: Request) -> Response:
        refused = check_key(request)
        if refused is not None:
            return refused
        if answer is None:
            return await endpoint(request)
        try:
            return await endpoint(request)
        except catch as exc:
            return answer(exc)
    return guarded


def optional_int(request: Request, name: str, low: int, high: int,
                 bad: BadQuery) -> int | None:
    """Query parameter ``name`` as an integer from ``low`` to ``high``, ``None`` when absent
    or empty; raises ``bad(message)`` for anything else."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad(f"'{name}' must be an integer") from None
    if not low <= value <= high:
        raise bad(f"'{name}' must be from {low} to {high}")
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int,
              bad: BadQuery) -> int:
    """:func:`optional_int`, ``default`` when absent or empty."""
    value = optional_int(request, name, low, high, bad)
    return default if value is None else value
