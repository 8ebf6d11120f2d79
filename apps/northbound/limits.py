"""What one API request may cost, and what a JSON body may hold: checked once, before any work.

Every request body goes through :func:`parse_json` (from ``api._json_body``) and every
collection query through :func:`check_query` (from ``collections.parse``), so no handler
ever sees a body or a query these rules refuse. Each refusal is a 400 NeutronError
(413 for a body over ``MAX_BODY``), and since it comes before the handler, nothing is stored.

Body rules, as Neutron's (its JSON goes into MySQL, which refuses these too):

- UTF-8 only, strictly: a UTF-8-encoded surrogate (``ED A0 80``), which Python's
  ``json.loads`` would let through, is not UTF-8;
- no lone surrogate from a ``\\ud800`` escape, in a key or a value: it is not text, and
  could never be written back out as UTF-8;
- numbers are finite: no ``NaN``, ``Infinity``, and no ``1e999`` (a float that overflows
  to infinity); a stored NaN would be served back as invalid JSON;
- at most ``MAX_DEPTH`` levels of objects and arrays (a 600-level ``binding:profile``
  would otherwise blow Python's recursion limit wherever it is copied or rendered).

Query rules: at most ``MAX_SORT_KEYS`` sort keys, ``MAX_FIELDS`` ``fields`` values and
``MAX_FILTER_VALUES`` filter values (each costs a pass over the collection; without a
bound, a URL of 2,400 sort keys took 3 s of CPU).
"""

from __future__ import annotations

import json
import math
from typing import Any

from topology.store import BadRequest

MAX_BODY = 1024 * 1024  # bytes
MAX_DEPTH = 32  # nested objects and arrays in a body, the outermost counting 1
MAX_SORT_KEYS = 16
MAX_FIELDS = 64
MAX_FILTER_VALUES = 256


def _malformed(reason: str) -> BadRequest:
    return BadRequest("HTTPBadRequest", f"Malformed request body: {reason}.")


def _no_constant(name: str) -> Any:
    raise _malformed(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _malformed(f"{text[:32]} is out of range for a number")
    return value


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, by the rules above (BadRequest if it breaks one)."""
    try:
        text = raw.decode("utf-8")  # strict: a surrogate encoded in UTF-8 is an error here
    except UnicodeDecodeError as exc:
        raise _malformed(f"not valid UTF-8 at byte {exc.start}") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):  # RecursionError: nesting deep enough to stop the parser itself
        raise BadRequest("HTTPBadRequest", "Malformed request body") from None
    _check_tree(doc)
    return doc


def _check_tree(doc: Any) -> None:
    """Depth and strings of a parsed body, iteratively (a recursive walk is what deep bodies break)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise BadRequest("HTTPBadRequest", f"Request body nested deeper than {MAX_DEPTH} levels.")
        if isinstance(value, dict):
            for key in value:
                _check_text(key)
            stack.extend((v, depth + 1) for v in value.values())
        else:
            stack.extend((v, depth + 1) for v in value)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _malformed(f"lone surrogate \\u{ord(text[exc.start]):04x} in a string") from None


def check_query(values: dict[str, list[str]], paging: frozenset[str]) -> None:
    """A collection query's cost: sort keys, ``fields`` and filter values within bounds (BadRequest if not)."""
    counts = (("sort keys", len(values.get("sort_key", [])), MAX_SORT_KEYS),
              ("fields", len(values.get("fields", [])), MAX_FIELDS),
              ("filter values", sum(len(v) for k, v in values.items() if k not in paging), MAX_FILTER_VALUES))
    for what, count, most in counts:
        if count > most:
            raise BadRequest("HTTPBadRequest", f"Too many {what} in the query: {count}, at most {most}.")
