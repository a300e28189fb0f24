"""The channel core: server-pushed streams that never silently lose a publication.

A channel (``class:name``) has a stream of publications with dense offsets per epoch, a
bounded history, and a state that publications patch atomically. Subscribers recover what they
missed from a position, or get the state with the reason they could not (never a partial
replay). Handlers give channel classes their meaning; the core knows none of them.

* ``types`` — positions, retention, channel classes; ``state`` — patches and the version
  rule; ``recovery`` — the all-or-nothing decision;
* ``backend`` — the protocol; ``memory`` (one process) and ``redis`` (+ ``scripts``);
* ``hub`` — publishing, one feed per channel with local subscribers, loss detection;
* ``endpoint`` — the channel protocol on a WebSocket path (bounds, authorization);
* ``services`` — what handlers may use; ``online`` — per-user counts; ``ingest`` — the Redis
  stream other languages publish through.
"""
