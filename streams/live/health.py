"""What the live streams look like at a glance: the ``/health`` answer and the monitor's
one-line summary, both computed from :class:`~streams.live.types.StreamStats` snapshots.

Usage::

    code, payload = health_report(manager.streams(), mode="frames")   # 200 ok / degraded, 503 down
    log.info("live: %s", summary_line(manager.streams()))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams.live.types import StreamState, StreamStats


def health_report(streams: Sequence[StreamStats], mode: str) -> tuple[int, dict[str, Any]]:
    """``(http_status, payload)``: 200 ``ok`` when all streams are live, 200 ``degraded``
    when some are, 503 ``down`` when none is (or there are none)."""
    live = sum(1 for s in streams if s.state == StreamState.LIVE)
    if streams and live == len(streams):
        status, code = "ok", 200
    elif live:
        status, code = "degraded", 200
    else:
        status, code = "down", 503
    payload = {
        "status": status,
        "live": live,
        "total": len(streams),
        "mode": mode,
        "streams": {
            s.id: {
                "state": s.state.value,
                "fps": round(s.fps, 2),
                "last_error": s.last_error,
                "drops": s.dropped,
                "reconnects": s.reconnects,
                "faults": s.faults,
                "queued": s.queued,
            }
            for s in streams
        },
    }
    return code, payload


def summary_line(streams: Sequence[StreamStats]) -> str:
    """One line describing every stream (what the manager's monitor thread logs)."""
    live = sum(1 for s in streams if s.state == StreamState.LIVE)
    parts = [f"live {live}/{len(streams)}"]
    for s in streams:
        text = (f"{s.id} {s.state.value} {s.fps:.1f}fps q={s.queued} "
                f"drops={s.dropped} reconnects={s.reconnects}")
        if s.state != StreamState.LIVE and s.last_error:
            text += f" err={s.last_error!r}"
        parts.append(text)
    return " | ".join(parts)
