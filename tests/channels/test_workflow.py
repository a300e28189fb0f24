"""/ws/workflow end to end: state and offsets consistent for late joiners, recovery over the
wire, the reasons it cannot recover, bad input, floods and revocation."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import captify_ws
from captify_ws.client import ChannelClient
from tests.channels.support import SECRET, pubs, raw, subscribe, token, until
from tests.helpers import running_server


async def test_late_joiner_state_and_offset_are_exactly_consistent() -> None:
    """Joiners arriving while a run publishes get (state, offset) such that state + the
    patches after offset = the final state, for every joiner."""
    async with running_server() as srv:
        final: dict[str, object] = {}
        joiners: list[ChannelClient] = []

        async def publisher() -> None:
            for i in range(200):
                patch = {f"step{i % 7}": i, "version": i + 1}
                final.update(patch)
                await captify_ws.publish("workflow:run-1", "step.status",
                                         {"step": i % 7, "n": i}, state_patch=patch)
                if i % 40 == 0:
                    await asyncio.sleep(0)

        async def join() -> None:
            for _ in range(5):
                client = ChannelClient(f"{srv.ws}/ws/workflow")
                client.subscribe("workflow:run-1")
                await client.start()
                joiners.append(client)
                await asyncio.sleep(0.001)

        await asyncio.gather(publisher(), join())
        try:
            for client in joiners:
                sub = client.subscriptions["workflow:run-1"]
                await until(lambda sub=sub: sub.offset == 200, "every joiner at offset 200")
                assert sub.state == final
        finally:
            for client in joiners:
                await client.stop()


async def test_recovery_replays_with_offsets_then_goes_live(transport: str) -> None:
    """A subscriber back with since gets every missed pub with its offset, then live ones (on
    both transports)."""
    async with running_server(transport) as srv:
        first = await captify_ws.publish("workflow:r", "a", 1)
        for i in range(2, 6):
            await captify_ws.publish("workflow:r", "a", i)
        async with raw(f"{srv.ws}/ws/workflow") as client:
            answer = await subscribe(client, "workflow:r",
                                     since={"offset": 2, "epoch": first.epoch})
            assert answer == {"type": "subscribed", "id": 1, "channel": "workflow:r",
                              "epoch": first.epoch, "offset": 5, "recovered": True,
                              "replay": 3}
            await captify_ws.publish("workflow:r", "a", 6)
            got = [await client.expect("pub") for _ in range(4)]
            assert [(m["offset"], m["data"]) for m in got] == [(3, 3), (4, 4), (5, 5), (6, 6)]


async def test_unrecoverable_positions_say_why_and_carry_the_state() -> None:
    """Another epoch, a trimmed history, too many missed: recovered:false with the reason and
    the state, never a partial replay."""
    async with running_server(workflow_history_size=3,
                              channel_recovery_max_publications=5) as srv:
        first = await captify_ws.publish("workflow:x", "s", 1, state_patch={"n": 1})
        for i in range(2, 8):
            await captify_ws.publish("workflow:x", "s", i, state_patch={"n": i})
        epoch = first.epoch
        cases = [({"offset": 3, "epoch": "other"}, "epoch"),
                 ({"offset": 99, "epoch": epoch}, "epoch"),
                 ({"offset": 3, "epoch": epoch}, "trimmed"),
                 ({"offset": 1, "epoch": epoch}, "too_far")]
        async with raw(f"{srv.ws}/ws/workflow") as client:
            for ident, (since, reason) in enumerate(cases, 1):
                answer = await subscribe(client, "workflow:x", ident, since)
                assert (answer["recovered"], answer["reason"]) == (False, reason)
                assert (answer["offset"], answer["state"]) == (7, {"n": 7})
                await client.send({"type": "unsubscribe", "channel": "workflow:x"})
                await client.expect("unsubscribed")
            assert pubs(await client.quiet(0.2)) == []


async def test_stale_versions_and_repeated_keys_are_not_delivered() -> None:
    """The version rule drops an older patch; an idempotency key delivers once."""
    async with running_server() as srv, raw(f"{srv.ws}/ws/workflow") as client:
        await subscribe(client, "workflow:v")
        one = await captify_ws.publish("workflow:v", "run.status", {"s": "b"},
                                       state_patch={"s": "b", "version": 2},
                                       idempotency_key="k")
        again = await captify_ws.publish("workflow:v", "run.status", {"s": "b"},
                                         state_patch={"s": "b", "version": 2},
                                         idempotency_key="k")
        stale = await captify_ws.publish("workflow:v", "run.status", {"s": "a"},
                                         state_patch={"s": "a", "version": 1})
        assert (again.offset, again.duplicate) == (one.offset, True)
        assert stale.stale and stale.offset == one.offset
        got = pubs(await client.quiet(0.3))
        assert [(m["offset"], m["data"], m["patch"]) for m in got] == \
            [(1, {"s": "b"}, {"s": "b", "version": 2})]


async def test_ephemeral_publications_are_live_only() -> None:
    """Ephemeral: delivered live without offset, never replayed."""
    async with running_server() as srv, raw(f"{srv.ws}/ws/workflow") as client:
        answer = await subscribe(client, "workflow:e")
        await captify_ws.publish("workflow:e", "progress", {"pct": 10}, ephemeral=True)
        tick = await client.expect("pub")
        assert tick["ephemeral"] is True and "offset" not in tick
        async with raw(f"{srv.ws}/ws/workflow") as late:
            back = await subscribe(late, "workflow:e",
                                   since={"offset": 0, "epoch": answer["epoch"]})
            assert back["recovered"] and back["replay"] == 0


BAD_REQUESTS = [
    ({"type": "subscribe", "id": 1, "channel": "nope:x"}, 4400, "unknown channel class"),
    ({"type": "subscribe", "id": 1, "channel": "workflow:x", "since": {"offset": "1"}}, 4400,
     "malformed since"),
    ({"type": "subscribe", "id": 1, "channel": "workflow:x", "since": 17}, 4400,
     "malformed since"),
    ({"type": "subscribe", "id": 1, "channel": "notifications:victim"}, 4400,
     "unknown channel class"),
    ({"type": "subscribe", "id": 1, "channel": "workflow:" + "x" * 300}, 4400, "longer than"),
    ({"type": "mark_read", "id": 1, "ids": [1]}, 4400, "unknown request type"),
    ({"type": "subscribe", "id": 1, "channel": "workflow:x", "pad": "x" * 70_000}, 1009,
     "request larger than"),
    ({"type": "subscribe", "id": 1, "channel": "workflow:secret"}, 4403, "Access denied"),
]


@pytest.mark.parametrize(("request_", "code", "text"), BAD_REQUESTS)
async def test_bad_input_gets_a_clear_error_and_disturbs_nothing(
        request_: dict[str, object], code: int, text: str) -> None:
    """Each kind of bad request is answered with an error naming the fault; the same socket
    keeps its other channel, and another client's stream is untouched."""
    async with running_server(auth="jwt", jwt_secret=SECRET, authorizer="jwt-claims") as srv:
        reader = token("u1", docs={"workflow:run-*": "read", "workflow:x": "read"})
        url = f"{srv.ws}/ws/workflow?token={reader}"
        async with raw(url) as bad, raw(url) as other:
            await subscribe(bad, "workflow:run-1", 7)
            await subscribe(other, "workflow:run-1", 7)
            await bad.send(request_)
            error = await bad.expect("error")
            assert error["id"] == 1 and error["code"] == code and text in error["message"]
            await captify_ws.publish("workflow:run-1", "still", "here")
            for client in (bad, other):
                assert (await client.expect("pub"))["data"] == "here"


async def test_huge_publications_are_refused_over_http_and_python() -> None:
    """data past channel_publication_max_bytes: 1009 / HTTP 413, nothing published."""
    async with running_server(api_key="k", channel_publication_max_bytes=1024) as srv, \
            httpx.AsyncClient(timeout=10) as http:
        with pytest.raises(captify_ws.ChannelError) as caught:
            await captify_ws.publish("workflow:h", "big", "x" * 2000)
        assert caught.value.code == 1009
        answer = await http.post(f"{srv.http}/api/v1/publish",
                                 headers={"Authorization": "Bearer k"},
                                 json={"channel": "workflow:h", "event": "big",
                                       "data": "x" * 2000})
        assert answer.status_code == 413 and "larger than 1024" in answer.json()["error"]
        position = await http.get(f"{srv.http}/api/v1/channels/workflow:h/position",
                                  headers={"Authorization": "Bearer k"})
        assert position.json()["offset"] == 0


async def test_subscribe_floods_and_channel_counts_are_bounded() -> None:
    """Past the subscribe burst: 4429 per request; past channels per connection: 4429; the
    connection keeps its channels, and unsubscribing frees a slot."""
    async with running_server(channel_subscribe_burst=5, channel_subscribe_rate_per_s=1,
                              channels_per_connection_max=3) as srv, \
            raw(f"{srv.ws}/ws/workflow") as client:
        for i in range(5):
            await client.send({"type": "subscribe", "id": i, "channel": f"workflow:f{i}"})
        answers = [await client.expect("subscribed") for _ in range(3)]
        errors = [await client.expect("error") for _ in range(2)]
        assert [a["id"] for a in answers] == [0, 1, 2]
        assert [(e["id"], e["code"]) for e in errors] == [(3, 4429), (4, 4429)]
        assert "more than 3 channels" in errors[0]["message"]
        await client.send({"type": "subscribe", "id": 9, "channel": "workflow:f9"})
        flood = await client.expect("error")
        assert flood["code"] == 4429 and "subscribes per second" in flood["message"]
        await captify_ws.publish("workflow:f0", "alive", 1)
        assert (await client.expect("pub"))["channel"] == "workflow:f0"


async def test_revocation_ends_the_subscription_live() -> None:
    """revoke(channel, user): that user's subscription ends with 4403 at once, their other
    channels and other users stay; a new subscribe is refused."""
    async with running_server(auth="jwt", jwt_secret=SECRET) as srv:
        async with raw(f"{srv.ws}/ws/workflow?token={token('mallory')}") as mallory, \
                raw(f"{srv.ws}/ws/workflow?token={token('trent')}") as trent:
            for client in (mallory, trent):
                await subscribe(client, "workflow:secret", 1)
                await subscribe(client, "workflow:open", 2)
            assert await captify_ws.revoke("workflow:secret", "mallory") == 1
            gone = await mallory.expect("unsubscribed")
            assert gone == {"type": "unsubscribed", "channel": "workflow:secret", "code": 4403,
                            "reason": "access revoked"}
            await captify_ws.publish("workflow:secret", "s", 1)
            await captify_ws.publish("workflow:open", "o", 1)
            assert [m["channel"] for m in pubs(await mallory.quiet(0.3))] == ["workflow:open"]
            assert sorted(m["channel"] for m in pubs(await trent.quiet(0.3))) == \
                ["workflow:open", "workflow:secret"]
            await mallory.send({"type": "subscribe", "id": 3, "channel": "workflow:secret"})
            assert (await mallory.expect("error"))["code"] == 4403


async def test_http_publish_batch_position_and_history() -> None:
    """The HTTP API: publish, batch (per-item errors), position, history pages."""
    auth = {"Authorization": "Bearer k"}
    async with running_server(api_key="k") as srv, httpx.AsyncClient(timeout=10) as http:
        one = (await http.post(f"{srv.http}/api/v1/publish", headers=auth, json={
            "channel": "workflow:api", "event": "a", "data": {"n": 1},
            "state_patch": {"n": 1}, "idempotency_key": "i1"})).json()
        assert one == {"offset": 1, "epoch": one["epoch"], "duplicate": False, "stale": False,
                       "sealed": False}
        batch = (await http.post(f"{srv.http}/api/v1/publish/batch", headers=auth, json={
            "publications": [{"channel": "workflow:api", "event": "b", "data": 2},
                             {"channel": "nope:api", "event": "b"},
                             {"channel": "workflow:api", "event": "a", "data": {"n": 1},
                              "idempotency_key": "i1"}]})).json()["results"]
        assert batch[0]["offset"] == 2 and batch[1]["code"] == 4400 and batch[2]["duplicate"]
        position = (await http.get(f"{srv.http}/api/v1/channels/workflow:api/position",
                                   headers=auth)).json()
        assert position == {"offset": 2, "epoch": one["epoch"]}
        history = (await http.get(f"{srv.http}/api/v1/channels/workflow:api/history",
                                  params={"since": 1, "limit": 10}, headers=auth)).json()
        assert [p["offset"] for p in history["publications"]] == [2]
        assert history["first_offset"] == 1
        bad = await http.get(f"{srv.http}/api/v1/channels/workflow:api/history",
                             params={"since": "x"}, headers=auth)
        assert bad.status_code == 400
        assert (await http.post(f"{srv.http}/api/v1/publish", json={})).status_code == 401
        client_js = await http.get(f"{srv.http}/client/channels.js")
        assert client_js.status_code == 200 and "export class ChannelClient" in client_js.text
        assert "javascript" in client_js.headers["content-type"]
        types = await http.get(f"{srv.http}/client/channels.d.ts")
        assert "export class ChannelClient" in types.text
        assert (await http.get(f"{srv.http}/client/nothing.js")).status_code == 404
        assert json.loads((await http.post(f"{srv.http}/api/v1/publish", headers=auth,
                                           content=b"{")).text)["code"] == 4400


async def test_a_custom_authorizer_sees_every_subscribe_and_recovery() -> None:
    """--authorizer module:function is asked on each subscribe, with since or not; a refusal
    is a 4403 error and nothing is replayed."""
    from tests.outside import channel_hooks

    channel_hooks.CALLS.clear()
    async with running_server(authorizer="tests.outside.channel_hooks:authorize") as srv, \
            raw(f"{srv.ws}/ws/workflow") as client:
        first = await captify_ws.publish("workflow:ok-1", "e", 1)
        await captify_ws.publish("workflow:no-1", "e", 1)
        await subscribe(client, "workflow:ok-1", 1, {"offset": 0, "epoch": first.epoch})
        await client.send({"type": "subscribe", "id": 2, "channel": "workflow:no-1",
                           "since": {"offset": 0, "epoch": first.epoch}})
        refused = await client.expect("error")
        assert (refused["id"], refused["code"]) == (2, 4403)
        assert [m["channel"] for m in pubs(await client.quiet(0.2))] == ["workflow:ok-1"]
    assert channel_hooks.CALLS == [(None, "workflow:ok-1"), (None, "workflow:no-1")]
