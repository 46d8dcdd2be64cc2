"""JSON encoding of payloads, results and checkpoints, with errors that say what to change.

Both backends store exactly what this module accepts, so a value that PostgreSQL's ``jsonb``
would refuse (NUL characters, lone surrogates, NaN) is refused here, before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from batchworks.errors import PayloadError

MAX_PAYLOAD_BYTES = 1024 * 1024  # bytes of encoded JSON; backends take max_payload_bytes=

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# The C scanner json.loads runs; typeshed does not declare the attribute.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
# An escaped NUL that is not itself an escaped backslash followed by "u0000".
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_HINTS = {
    "datetime": "pass an ISO string (value.isoformat())",
    "date": "pass an ISO string (value.isoformat())",
    "time": "pass an ISO string (value.isoformat())",
    "Decimal": "pass a str, or a float if rounding is fine",
    "UUID": "pass str(value)",
    "bytes": "pass a str (for example base64)",
    "bytearray": "pass a str (for example base64)",
    "set": "pass a list",
    "frozenset": "pass a list",
}


def dumps(value: Any, *, what: str, limit: int = MAX_PAYLOAD_BYTES) -> str:
    """Encode ``value`` as compact JSON text, or raise :class:`PayloadError`.

    :param what: names the value in the error, for example ``"payload for queue 'emails'"``.
    :param limit: the most bytes the encoded UTF-8 text may have.
    """
    try:
        text = _encoder.encode(value)
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to encode; flatten it") from None
    except (TypeError, ValueError) as exc:
        raise PayloadError(_describe(value, what, exc)) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise PayloadError(
            f"{what} contains a lone surrogate character, which is not valid Unicode; "
            "decode the text it came from with errors='replace'"
        ) from None
    if size > limit:
        raise PayloadError(_too_big(what, size, limit))
    if "{" in text:
        _check_keys(value, what)
    if "\\u0000" in text and _NUL.search(text):
        raise PayloadError(
            f"{what} contains a NUL character (\\u0000), which PostgreSQL cannot store; "
            "remove it or encode the text (for example base64)"
        )
    return text


def dumps_array(values: Sequence[Any], *, what: Callable[[int], str], limit: int) -> str:
    """Encode ``values`` as one JSON array, each element held to what :func:`dumps` checks.

    The checks run once over the whole array rather than once per value, which makes a bulk
    enqueue several times cheaper; a value over ``limit`` is refused without encoding it
    twice. On anything else to refuse, each value is checked on its own, so the errors are
    exactly those of :func:`dumps`.

    :param what: names the value at an index in an error, for example ``"payload #3 for ..."``.
    """
    try:
        texts = list(map(_encoder.encode, values))
    except (TypeError, ValueError, RecursionError):
        return _dumps_each(values, what, limit)
    text = "[" + ",".join(texts) + "]"
    if text.isascii():
        sizes = list(map(len, texts))
    else:
        try:
            sizes = [len(item.encode("utf-8")) for item in texts]
        except UnicodeEncodeError:  # a lone surrogate
            return _dumps_each(values, what, limit)
    if max(sizes, default=0) > limit:
        index = next(i for i, size in enumerate(sizes) if size > limit)
        _dumps_each(values[:index], what, limit)  # an earlier value's own error comes first
        raise PayloadError(_too_big(what(index), sizes[index], limit))
    if ("{" in text and _bad_keys(values)) or ("\\u0000" in text and _NUL.search(text)):
        return _dumps_each(values, what, limit)
    return text


def _dumps_each(values: Sequence[Any], what: Callable[[int], str], limit: int) -> str:
    return "[" + ",".join(dumps(v, what=what(i), limit=limit) for i, v in enumerate(values)) + "]"


def _too_big(what: str, size: int, limit: int) -> str:
    return (
        f"{what} is {size} bytes of JSON, over the limit of {limit}; store the data "
        "elsewhere and pass a reference, or raise max_payload_bytes on the backend"
    )


def _bad_keys(values: Any) -> bool:
    try:
        _check_keys(values, "")
    except PayloadError:
        return True
    return False


def loads(text: str) -> Any:
    """Decode JSON text written by :func:`dumps` or by PostgreSQL's ``jsonb`` output.

    Such text is one value with no white space around it, so json's C scanner can take it
    directly: about 7x faster than :func:`json.loads` on a small payload, which is the cost of
    every claimed job. Anything else goes through :func:`json.loads`, and its errors.
    """
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        end = -1
    return value if end == len(text) else json.loads(text)


def loads_optional(text: str | None) -> Any:
    """:func:`loads`, with None (an SQL NULL: no result, no checkpoint) staying None."""
    return None if text is None else loads(text)


def _describe(value: Any, what: str, exc: Exception) -> str:
    for path, bad in _walk(value, "$"):
        if isinstance(bad, float):
            return (
                f"{what} is not JSON: {bad!r} at {path!r}; JSON has no NaN or Infinity, "
                "pass None or a string"
            )
        name = type(bad).__name__
        hint = _HINTS.get(name, "convert it to a str, number, bool, None, list or dict")
        return f"{what} is not JSON: {name} at {path!r}; {hint}"
    return f"{what} is not JSON: {exc}"


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Yield (path, value) for each value that JSON cannot encode, depth first, iteratively."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        path, value = stack.pop()
        if value is None or isinstance(value, (str, bool, int)):
            continue
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                yield path, value
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    yield f"{path} key {key!r}", key
                else:
                    stack.append((f"{path}.{key}", item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
        else:
            yield path, value


def _check_keys(value: Any, what: str) -> None:
    """Refuse dict keys that are not str: JSON would rename them (7 -> "7"), and merge two
    that render alike ({1: "a", "1": "b"} -> {"1": "b"})."""
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise PayloadError(
                        f"{what} is not JSON: {type(key).__name__} key {key!r} at {path!r}; "
                        "JSON object keys are strings, pass str(key)"
                    )
                if isinstance(child, (dict, list, tuple)):
                    stack.append((f"{path}.{key}", child))
        elif isinstance(item, (list, tuple)):
            stack.extend(
                (f"{path}[{i}]", child)
                for i, child in enumerate(item)
                if isinstance(child, (dict, list, tuple))
            )
