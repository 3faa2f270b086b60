"""A child process for ``test_ingest``: puts large messages on a queue until it is killed.

Kept in its own light module: a spawned child imports the module of its target.
"""

from __future__ import annotations

from typing import Any


def put_forever(events: Any, size: int) -> None:
    """Put ``("frames", <size bytes>)`` messages on ``events`` until killed."""
    payload = bytes(size)
    while True:
        events.put(("frames", payload))
