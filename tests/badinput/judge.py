"""What bad input must come to: stored and returned exactly, or refused before anything is
written, clearly. (How long a refusal takes is a figure of ``bench/refusal.py``, not a test: a
loaded machine stretches any wall-clock bound.)

:func:`verdict_for` says which, for any value, independently of batchworks' own checks;
:func:`same` compares what came back with what went in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from batchworks import ConfigurationError, PayloadError

_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,49}")


def valid_queue(name: str) -> bool:
    return bool(_QUEUE.fullmatch(name))


def valid_schema(name: str) -> bool:
    return bool(_SCHEMA.fullmatch(name))


def dedupe_key_ok(key: str) -> bool:
    """True for a dedupe key batchworks must store: 1-512 characters, valid text, no NUL."""
    return 0 < len(key) <= 512 and "\x00" not in key and _text_ok(key)


def _text_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def verdict_for(value: Any) -> str | None:
    """None when ``value`` is storable JSON; else why it must be refused."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return "NaN or Infinity"
        elif isinstance(item, str):
            if "\x00" in item:
                return "NUL"
            if not _text_ok(item):
                return "lone surrogate"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"{type(key).__name__} key"
                stack.extend([key, child])
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            return type(item).__name__
    return None


def same(sent: Any, got: Any, path: str = "$") -> str | None:
    """None when ``got`` is ``sent`` as JSON keeps it, else where they differ.

    JSON has one array type, so a tuple comes back a list; jsonb keeps numbers as decimals, so
    a float written in exponent form with no fraction (1e16) comes back an int that converts
    back to the same float. Nothing else may change: not a type, not a key, not a character.
    """
    if isinstance(sent, bool) or isinstance(got, bool):
        ok = type(sent) is type(got) and sent == got
    elif isinstance(sent, float) and isinstance(got, int):
        ok = sent.is_integer() and _as_float(got) == sent
    elif isinstance(sent, (int, float, str)) or sent is None:
        ok = type(sent) is type(got) and sent == got
    elif isinstance(sent, (list, tuple)):
        if not isinstance(got, list) or len(got) != len(sent):
            return f"{path}: {_short(sent)} came back {_short(got)}"
        for i, (a, b) in enumerate(zip(sent, got, strict=True)):
            found = same(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    elif isinstance(sent, dict):
        if not isinstance(got, dict) or set(got) != set(sent):  # jsonb orders keys its own way
            return f"{path}: keys {_short(list(sent))} came back {_short(got)}"
        for key, child in sent.items():
            found = same(child, got[key], f"{path}.{key}")
            if found:
                return found
        return None
    else:
        ok = False
    return None if ok else f"{path}: {_short(sent)} came back {_short(got)}"


def _as_float(number: int) -> float:
    try:
        return float(number)
    except OverflowError:
        return math.inf


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


async def refused(call: Callable[[], Awaitable[Any]], *fragments: str) -> str:
    """Await ``call``; it must raise a validation error naming ``fragments``. Any other error
    (a driver or SQL error) fails, and so does an accepted call."""
    try:
        await call()
    except (PayloadError, ConfigurationError) as exc:
        message = str(exc)
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        return message
    raise AssertionError("accepted what must be refused")
