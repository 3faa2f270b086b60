"""One-line reasons from other libraries' exceptions, for the EngineErrors that wrap them.

``fovea`` prints an EngineError as one line (``fovea: engine error: ...``). The errors of
torch, ONNX Runtime or protobuf can span lines (tracebacks, notes) or run to paragraphs of
advice; :func:`reason` keeps what says what went wrong: the first line (or, where the
message embeds a traceback, as TorchScript's do, that traceback's last line: the error it
reports), cut after its last whole sentence that fits, with ``[...]`` where text was left
out. It never cuts inside a sentence: a first sentence longer than the limit is kept whole.

Usage::

    except RuntimeError as e:
        raise EngineError(f"{path}: torch cannot read it ({reason(e)})") from e
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?](?=\s)")


def reason(e: BaseException, limit: int = 240) -> str:
    """``e``'s message on one line, shortened at a line or sentence boundary (see the module)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    first, shortened = lines[0], len(lines) > 1
    if any(line.startswith("Traceback") for line in lines):
        first = lines[-1]
    if len(first) > limit:
        ends = [m.end() for m in _SENTENCE_END.finditer(first, 0, limit + 1)]
        if not ends:  # no sentence ends within the limit: keep the first one whole
            m = _SENTENCE_END.search(first)
            ends = [m.end()] if m is not None else []
        if ends and ends[-1] < len(first):
            first, shortened = first[: ends[-1]], True
    return f"{first} [...]" if shortened else first


def describe(e: BaseException, limit: int = 240) -> str:
    """``"<type>: <reason>"`` for ``e`` (the type named once, where the reason already starts with it)."""
    text = reason(e, limit)
    name = type(e).__name__
    return text if text.startswith(f"{name}:") or text == name else f"{name}: {text}"
