"""AI agents as participants: run streams on ``/ws/agent`` (``events`` — the events, their
rules and the compacted snapshot; ``runs`` — publishing, cancel, the producer watchdog;
``producer`` — ``agent_run()`` with token coalescing)."""
