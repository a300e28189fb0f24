"""The cluster bridge: rooms of this instance ↔ the broker ↔ the other instances.

What crosses instances, on the channel of each loaded document (``<prefix>:doc:<id>``):

* Yjs updates accepted here (origin a member or the server API) are published once; updates
  from the broker are applied and relayed to local clients with origin ``broker``, so they are
  neither published again nor stored again (the accepting instance stored them).
* presence changes of local clients (batched, like everything presence), and a presence query
  when an instance loads the document, answered with the presence of local clients;
* JSON relays (selection, steps, ``broadcast_steps``) and messages for one clientID.

On ``<prefix>:cluster`` every instance sends a heartbeat with its connection counts every
``cluster_heartbeat_s`` seconds. An instance silent for three heartbeats is dead: its
connections drop out of the counts and its clients' presence is removed everywhere, so a dead
instance disappears within ``3 × cluster_heartbeat_s`` plus one heartbeat.

Anti-entropy: Pub/Sub drops what is published while a subscriber is disconnected. Every
``anti_entropy_s`` seconds, after a broker reconnect and when a document loads, instances
exchange state vectors (plus a hash of their delete set, which state vectors do not cover);
an instance that has something another lacks publishes it. Any dropped message is repaired
within one anti-entropy round after the broker is back.

Alone with a document (:mod:`~captify_ws.cluster.solitude`): once a published update or
presence change reached no subscriber but us (the ``PUBLISH`` reply) and no other instance
spoke about the document meanwhile, its updates and presence changes are no longer published
(everything else is), until any message of another instance about it (on its channel or in a
digest), our own broker reconnect, or the room's unload. Safe: another instance can only have
started listening after that publication, and then announces itself (state vector and presence
query on load, a digest after a reconnect); our answer (the diff of all it lacks, our clients'
presence) covers what we skipped. Leaving because of a digest, or of our reconnect (a count of
one may then have been another's), we also publish our clients' presence.

Backends in other languages ``PUBLISH <prefix>:publish`` a JSON message (README "Scaling out").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from captify_ws.broker.base import Broker
from captify_ws.cluster.host import ClusterHost
from captify_ws.cluster.peers import InstanceInfo, RemoteOwner, is_local, owner_key
from captify_ws.cluster.solitude import Solitude
from captify_ws.errors import InvalidMessage
from captify_ws.protocol import cluster as wire
from captify_ws.protocol.ywebsocket import EMPTY_UPDATE, AwarenessEntry, _StrictDecoder
from captify_ws.rooms.document import DocumentRoom
from captify_ws.rooms.document_presence import DocumentPresence
from captify_ws.rooms.member import Origin
from captify_ws.rooms.presence import Change
from captify_ws.rooms.steps import Accepted
from captify_ws.tasks import wait_ended

logger = logging.getLogger("captify_ws.cluster")


def _decode_state_vector(state_vector: bytes) -> dict[int, int]:
    decoder = _StrictDecoder(state_vector)
    count = decoder.read_var_uint()
    return {decoder.read_var_uint(): decoder.read_var_uint() for _ in range(count)}


def covers(ours: bytes, theirs: bytes) -> bool:
    """Whether state vector ``ours`` has every struct that ``theirs`` has."""
    mine = _decode_state_vector(ours)
    return all(mine.get(client, 0) >= clock
               for client, clock in _decode_state_vector(theirs).items())


class ClusterBridge:
    """See the module docstring."""

    def __init__(self, server: ClusterHost, broker: Broker) -> None:
        self.server = server
        self.broker = broker
        self.instance = server.instance_id
        settings = server.settings
        prefix = settings.broker_prefix
        self._doc_prefix = f"{prefix}:doc:"
        self.cluster_channel = f"{prefix}:cluster"
        self.publish_channel = f"{prefix}:publish"
        self._heartbeat_s = settings.cluster_heartbeat_s
        self._anti_entropy_s = settings.anti_entropy_s
        self.instances: dict[str, InstanceInfo] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._last_vector_sent: dict[str, float] = {}
        self.solitude = Solitude()
        self._alone = self.solitude.alone

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.broker.on_message = self._on_message
        self.broker.on_reconnect = self._on_reconnect
        await self.broker.subscribe(self.cluster_channel)
        await self.broker.subscribe(self.publish_channel)
        await self.broker.start()
        rooms = self.server.rooms
        rooms.on_load.append(self._room_loaded)
        rooms.on_unload.append(self._room_unloaded)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeats(), name="captify-heartbeat"),
                       loop.create_task(self._anti_entropy(), name="captify-anti-entropy")]
        self._publish_heartbeat()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await wait_ended([*self._tasks, *self._pending], logger)
        self._tasks = []
        # Tell the others at once that our clients are gone.
        self.broker.publish(self.cluster_channel, wire.encode(
            wire.CONTROL, self.instance, wire.encode_json({"type": "leaving"})))
        await self.broker.stop()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- rooms → broker --------------------------------------------------------------------

    def channel(self, document_id: str) -> str:
        return self._doc_prefix + document_id

    def _room_loaded(self, room: DocumentRoom) -> None:
        room.add_update_listener(self._local_update)
        room.add_presence_listener(self._local_presence)
        room.add_relay_listener(self._local_relay)
        self._spawn(self._join_document(room))

    async def _join_document(self, room: DocumentRoom) -> None:
        await self.broker.subscribe(self.channel(room.document_id))
        if room.closed:
            return
        self.solitude.joined(room.document_id)
        # Ask the others for what they have that the store did not give us yet, and for the
        # presence of their clients.
        self._send_vector(room)
        self.broker.publish(self.channel(room.document_id),
                            wire.encode(wire.PRESENCE_QUERY, self.instance))

    def _room_unloaded(self, room: DocumentRoom) -> None:
        self._last_vector_sent.pop(room.document_id, None)
        self.solitude.unloaded(room.document_id)
        self._spawn(self.broker.unsubscribe(self.channel(room.document_id)))

    def _local_update(self, room: DocumentRoom, update: bytes, origin: Origin) -> None:
        if origin.kind in ("member", "server"):
            document_id = room.document_id
            if document_id in self._alone:
                self.solitude.skipped += 1
                return
            self.broker.publish(self._doc_prefix + document_id,
                                wire.encode(wire.UPDATE, self.instance, update),
                                self.solitude.probe(document_id))

    def _local_presence(self, room: DocumentPresence, changes: list[Change]) -> None:
        document_id = room.document_id
        if document_id in self._alone:
            self.solitude.skipped += 1
            return
        local = [wire.RemoteAwareness(change.entry, change.json_client_id,
                                      owner_key(change.owner), change.released)
                 for change in changes if is_local(change.owner)]
        if local:
            self.broker.publish(self._doc_prefix + document_id, wire.encode(
                wire.AWARENESS, self.instance, wire.encode_awareness(local)),
                self.solitude.probe(document_id))

    def _publish_local_presence(self, room: DocumentRoom) -> None:
        """The presence of this instance's clients of the document, for the others."""
        states = [wire.RemoteAwareness(s.entry(), s.json_client_id, owner_key(s.owner))
                  for s in room.presence.snapshot() if is_local(s.owner)]
        if states:
            self.broker.publish(self.channel(room.document_id), wire.encode(
                wire.AWARENESS, self.instance, wire.encode_awareness(states)))

    def _local_relay(self, room: DocumentRoom, text: str, client_id: str | None) -> None:
        self.publish_json(room.document_id, text, client_id)

    def publish_json(self, document_id: str, text: str, client_id: str | None = None) -> None:
        """Send a JSON message to the JSON clients of a document on the other instances."""
        if client_id is None:
            message = wire.encode(wire.JSON_ALL, self.instance, text.encode())
        else:
            message = wire.encode(wire.JSON_CLIENT, self.instance,
                                  wire.encode_to_client(client_id, text))
        self.broker.publish(self.channel(document_id), message)

    def publish_steps(self, document_id: str, accepted: Accepted) -> None:
        """Steps this instance's authority accepted, for the other instances."""
        self.broker.publish(self.channel(document_id), wire.encode(
            wire.STEPS, self.instance, wire.encode_json({
                "version": accepted.version, "steps": accepted.steps,
                "clientIDs": accepted.client_ids, "changeId": accepted.change_id})))

    def publish_stateless(self, document_id: str, payload: str, user_id: str | None,
                          connection_id: str | None) -> None:
        """A stateless message for the document's Hocuspocus providers on the other instances."""
        self.broker.publish(self.channel(document_id), wire.encode(
            wire.STATELESS, self.instance, wire.encode_json({
                "payload": payload, "userId": user_id, "connectionId": connection_id})))

    def publish_control(self, body: dict[str, Any]) -> None:
        self.broker.publish(self.cluster_channel, wire.encode(
            wire.CONTROL, self.instance, wire.encode_json(body)))

    # -- broker → rooms --------------------------------------------------------------------

    def _on_message(self, channel: str, data: bytes) -> None:
        try:
            if channel == self.publish_channel:
                self._on_external(data)
                return
            message = wire.decode(data)
            if message.instance == self.instance:
                return
            if channel == self.cluster_channel:
                self._on_cluster(message)
            elif channel.startswith(self._doc_prefix):
                document_id = channel[len(self._doc_prefix):]
                self.solitude.contact(document_id)  # before answering: we are not alone
                room = self.server.rooms.get(document_id)
                if room is not None and not room.closed:
                    self._on_document(room, message)
        except InvalidMessage as exc:
            logger.warning("ignored a malformed message on %s: %s", channel, exc)

    def _on_document(self, room: DocumentRoom, message: wire.ClusterMessage) -> None:
        kind = message.kind
        if kind == wire.UPDATE:
            room.apply_update(message.body, Origin("broker", instance=message.instance))
        elif kind == wire.AWARENESS:
            by_owner: dict[str, list[tuple[AwarenessEntry, str | None, bool]]] = {}
            for item in wire.decode_awareness(message.body):
                by_owner.setdefault(item.owner, []).append(
                    (item.entry, item.json_client_id, item.released))
            for key, entries in by_owner.items():
                room.presence.apply_remote(entries, RemoteOwner(message.instance, key),
                                           is_local)
        elif kind == wire.JSON_ALL:
            room.relay_json(wire.decode_text(message.body), None, publish=False)
        elif kind == wire.JSON_CLIENT:
            client_id, text = wire.decode_to_client(message.body)
            room.send_to_client(client_id, text, publish=False)
        elif kind == wire.STATE_VECTOR:
            self._answer_vector(room, message.body)
        elif kind == wire.STEPS:
            self.server.apply_remote_steps(room, Accepted(*wire.decode_steps(message.body)))
        elif kind == wire.STATELESS:
            stateless = wire.decode_stateless(room.document_id,
                                              wire.decode_object(message.body))
            self.server.stateless.deliver(room.document_id, stateless.payload,
                                          stateless.user_id, stateless.connection_id)
        elif kind == wire.PRESENCE_QUERY:
            self._publish_local_presence(room)

    def _on_cluster(self, message: wire.ClusterMessage) -> None:
        kind = message.kind
        if kind == wire.HEARTBEAT:
            handlers, documents, sent_at = wire.decode_heartbeat(message.body)
            info = self.instances.get(message.instance)
            if info is None:
                logger.info("instance %s joined the cluster", message.instance)
                info = self.instances[message.instance] = InstanceInfo(time.monotonic())
            info.last_seen = time.monotonic()
            if sent_at is not None:
                info.lag = max(0.0, time.time() - sent_at)
            info.handlers = handlers
            info.documents = documents
        elif kind == wire.DIGEST:
            for document_id, vector in wire.decode_digest(message.body):
                was_alone = self.solitude.contact(document_id)
                room = self.server.rooms.get(document_id)
                if room is not None and not room.closed:
                    self._answer_vector(room, vector)
                    if was_alone:  # a digest asks for no presence: what we skipped
                        self._publish_local_presence(room)
        elif kind == wire.CONTROL:
            body = wire.decode_object(message.body)
            if body.get("type") == "leaving":
                self._instance_gone(message.instance)
            else:
                self.server.on_cluster_control(body)

    def _on_external(self, data: bytes) -> None:
        try:
            message = wire.decode_external(data)
        except InvalidMessage as exc:
            logger.warning("ignored a message on %s: %s", self.publish_channel, exc)
            return
        if isinstance(message, wire.ExternalStateless):
            # Every instance receives the publish channel: each serves its own providers.
            self.server.stateless.deliver(message.document_id, message.payload,
                                          message.user_id, message.connection_id)
            return
        self._spawn(self.server.deliver_external_steps(message))

    # -- anti-entropy ----------------------------------------------------------------------

    @staticmethod
    def _fingerprint(room: DocumentRoom) -> tuple[bytes, bytes, bytes]:
        """(state vector, our update with no structs = our delete set, its hash)."""
        vector = room.state_vector()
        deletes = room.encode_state(vector)
        return vector, deletes, hashlib.blake2b(deletes, digest_size=8).digest()

    def _send_vector(self, room: DocumentRoom) -> None:
        vector, _, digest = self._fingerprint(room)
        self._last_vector_sent[room.document_id] = time.monotonic()
        self.broker.publish(self.channel(room.document_id),
                            wire.encode(wire.STATE_VECTOR, self.instance, digest + vector))

    def _answer_vector(self, room: DocumentRoom, body: bytes) -> None:
        """Someone told us its state: send what it lacks; ask for what we lack."""
        their_digest, their_vector = body[:8], body[8:]
        vector, deletes, digest = self._fingerprint(room)
        try:
            diff = room.encode_state(their_vector)
        except InvalidMessage as exc:
            logger.warning("cluster: a state vector for %r that cannot be read: %s",
                           room.document_id, exc)
            return
        if diff != deletes or (digest != their_digest and deletes != EMPTY_UPDATE):
            self.broker.publish(self.channel(room.document_id),
                                wire.encode(wire.UPDATE, self.instance, diff))
        if not covers(vector, their_vector) or digest != their_digest:
            last = self._last_vector_sent.get(room.document_id, 0.0)
            if time.monotonic() - last > 0.5:
                self._send_vector(room)

    def _on_reconnect(self) -> None:
        logger.info("broker reconnected: exchanging state vectors of %d documents",
                     len(self.server.rooms))
        # A receiver count of one may have been another instance's while our subscription was
        # down: what we skipped goes out (updates through the digest below).
        for document_id in self.solitude.reset():
            room = self.server.rooms.get(document_id)
            if room is not None and not room.closed:
                self._publish_local_presence(room)
        self._publish_heartbeat()
        self._publish_digest()

    def _publish_digest(self) -> None:
        rooms = [room for room in self.server.rooms.rooms.values() if not room.closed]
        for start in range(0, len(rooms), 500):
            entries = []
            for room in rooms[start:start + 500]:
                vector, _, digest = self._fingerprint(room)
                entries.append((room.document_id, digest + vector))
            self.broker.publish(self.cluster_channel, wire.encode(
                wire.DIGEST, self.instance, wire.encode_digest(entries)))

    async def _anti_entropy(self) -> None:
        while True:
            await asyncio.sleep(self._anti_entropy_s)
            if self.server.rooms.rooms:
                self._publish_digest()

    # -- membership and counts -------------------------------------------------------------

    def _publish_heartbeat(self) -> None:
        server = self.server
        documents = {room.document_id: len(room)
                     for room in server.rooms.rooms.values() if len(room)}
        handlers = {name: len(conns) for name, conns in server.connections.items()}
        self.broker.publish(self.cluster_channel, wire.encode(
            wire.HEARTBEAT, self.instance,
            wire.encode_json({"handlers": handlers, "documents": documents,
                              "sentAt": time.time()})))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            self._publish_heartbeat()
            deadline = time.monotonic() - 3 * self._heartbeat_s
            for instance, info in list(self.instances.items()):
                if info.last_seen < deadline:
                    logger.warning("instance %s silent for %.0f s: dropping its connections "
                                   "and presence", instance, time.monotonic() - info.last_seen)
                    self._instance_gone(instance)

    def _instance_gone(self, instance: str) -> None:
        self.instances.pop(instance, None)
        for room in self.server.rooms.rooms.values():
            for owner in room.presence.owners():
                if isinstance(owner, RemoteOwner) and owner.instance == instance:
                    room.presence.remove_owned_by(owner)

    @property
    def max_lag(self) -> float:
        return max((info.lag for info in self.instances.values()), default=0.0)

    def remote_document_count(self, document_id: str) -> int:
        return sum(info.documents.get(document_id, 0) for info in self.instances.values())

    def remote_handler_count(self, name: str) -> int:
        return sum(info.handlers.get(name, 0) for info in self.instances.values())
