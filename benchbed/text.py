"""Text that reaches a terminal or a log: control characters shown escaped, never raw.

A scenario name, a data path or a cell's stderr can hold escape sequences; printed raw they could
rewrite the terminal (colour, cursor moves, a cleared screen) or hide a line.
"""

from __future__ import annotations

import os
import re
import unicodedata


def control_characters(text: str) -> list[str]:
    """The control characters in `text` (Unicode category Cc, plus line and paragraph separators)."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")]


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character written as a Python escape (ESC -> ``\\x1b``)."""
    out = []
    for c in str(text):
        if (keep_newlines and c == "\n") or unicodedata.category(c) not in ("Cc", "Zl", "Zp"):
            out.append(c)
        else:
            out.append(" " if c == "\t" else repr(c)[1:-1])
    return "".join(out)


def os_error_reason(exc: OSError) -> str:
    """The system's reason for a failed I/O call, in one line ("No space left on device"); pyarrow's
    errors carry the errno only in their text ("... Detail: [errno 28] ...")."""
    code = exc.errno
    if code is None:
        found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
        code = int(found.group(1)) if found else None
    if code:
        return os.strerror(code)
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
