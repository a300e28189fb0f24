"""The cluster: rooms of this instance ↔ the broker ↔ the other instances.

:mod:`~captify_ws.cluster.bridge` (:class:`~captify_ws.cluster.bridge.ClusterBridge`: what
crosses instances, heartbeats, anti-entropy), :mod:`~captify_ws.cluster.peers` (the other
instances as this one sees them) and :mod:`~captify_ws.cluster.host` (what the bridge needs of
the server).
"""
