"""/admin: a login form instead of the API key in the URL; signed, expiring sessions."""

from __future__ import annotations

import httpx
from hypothesis import given
from hypothesis import strategies as st

from captify_ws.admin import ADMIN_COOKIE, MAX_FAILED_LOGINS, AdminSessions
from tests.helpers import running_server

KEY = "admin-key-for-tests"


async def test_login_form_sets_an_httponly_expiring_session() -> None:
    """/admin/ shows a form; posting the key sets an HttpOnly, SameSite=Strict cookie on
    /admin that expires with the session; the dashboard and its numbers then open."""
    async with running_server(api_key=KEY, admin_session_s=600) as srv, \
            httpx.AsyncClient(base_url=srv.http) as http:
        form = await http.get("/admin/")
        assert form.status_code == 401
        assert '<form method="post" action="login">' in form.text
        assert (await http.get("/admin/api/stats")).status_code == 401
        logged_in = await http.post("/admin/login", data={"key": KEY})
        assert logged_in.status_code == 303
        assert logged_in.headers["location"] == "./"
        cookie = logged_in.headers["set-cookie"].lower()
        for attribute in ("httponly", "samesite=strict", "path=/admin", "max-age=600"):
            assert attribute in cookie, cookie
        assert KEY not in logged_in.headers["set-cookie"]
        page = await http.get("/admin/")
        assert page.status_code == 200 and 'id="connections-total"' in page.text
        stats = await http.get("/admin/api/stats")
        assert stats.status_code == 200 and "handlers" in stats.json()


async def test_the_key_in_the_url_opens_nothing() -> None:
    """`/admin/?key=…` is not a way in (keys in URLs leak into history and logs)."""
    async with running_server(api_key=KEY) as srv, \
            httpx.AsyncClient(base_url=srv.http) as http:
        assert (await http.get(f"/admin/?key={KEY}")).status_code == 401
        assert (await http.get(f"/admin/api/stats?key={KEY}")).status_code == 401
        assert ADMIN_COOKIE not in http.cookies
        bearer = await http.get("/admin/api/stats", headers={"Authorization": f"Bearer {KEY}"})
        assert bearer.status_code == 200


async def test_wrong_keys_are_refused_then_limited() -> None:
    """A wrong key gets the form again with a message; after MAX_FAILED_LOGINS a minute even
    the right key waits (429)."""
    async with running_server(api_key=KEY) as srv, \
            httpx.AsyncClient(base_url=srv.http) as http:
        wrong = await http.post("/admin/login", data={"key": "guess"})
        assert wrong.status_code == 401
        assert "That is not this server's API key." in wrong.text
        assert "set-cookie" not in wrong.headers
        for attempt in range(MAX_FAILED_LOGINS - 1):
            await http.post("/admin/login", data={"key": f"guess-{attempt}"})
        limited = await http.post("/admin/login", data={"key": KEY})
        assert limited.status_code == 429
        huge = await http.post("/admin/login", content=b"key=" + b"x" * 10_000,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert huge.status_code in (413, 429)


async def test_logout_ends_the_browser_session() -> None:
    """Logout deletes the cookie; the form shows again."""
    async with running_server(api_key=KEY) as srv, \
            httpx.AsyncClient(base_url=srv.http) as http:
        await http.post("/admin/login", data={"key": KEY})
        assert (await http.get("/admin/")).status_code == 200
        out = await http.post("/admin/logout")
        assert out.status_code == 303
        assert (await http.get("/admin/")).status_code == 401


async def test_admin_off_without_key_or_hook() -> None:
    """No API key and no --admin-auth: 404 saying how to turn the dashboard on."""
    async with running_server() as srv, httpx.AsyncClient(base_url=srv.http) as http:
        answer = await http.get("/admin/")
        assert answer.status_code == 404 and "CAPTIFY_WS_API_KEY" in answer.text
        assert (await http.post("/admin/login", data={"key": "x"})).status_code == 404


def test_sessions_expire_and_are_bound_to_the_key() -> None:
    """A session holds until it expires, on any instance with the same key, and no longer
    once the key changes."""
    sessions = AdminSessions("k1", lifetime_s=60)
    token = sessions.issue(now=1000)
    assert sessions.valid(token, now=1059)
    assert not sessions.valid(token, now=1060)
    assert AdminSessions("k1", lifetime_s=5).valid(token, now=1030)  # another instance
    assert not AdminSessions("k2", lifetime_s=60).valid(token, now=1030)
    assert sessions.issue(now=1000) != token  # each login its own session


@given(st.data())
def test_a_changed_session_is_never_valid(data: st.DataObject) -> None:
    """Generated: any change to a token (a character replaced, cut, or a later expiry
    written in) makes it invalid."""
    sessions = AdminSessions("k1", lifetime_s=3600)
    token = sessions.issue(now=0)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != token[index]))
    assert not sessions.valid(token[:index] + replacement + token[index + 1:], now=1)
    assert not sessions.valid(token[:index], now=1)
    later = str(int(token.partition(".")[0]) + 10**6) + "." + token.partition(".")[2]
    assert not sessions.valid(later, now=1)
