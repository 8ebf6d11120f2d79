"""GET on a collection as Neutron serves it: filters, ``fields``, sorting, pagination, links.

Generic over resources: which keys may be filtered or sorted on, and how a
filter value is converted, come from what the resource's view shows and the
attribute maps (:mod:`apps.northbound.schema`), so a new resource gets all of
this without any code here.

Neutron semantics matched (``neutron/api/api_common.py`` and the ML2 plugin's
native sorting and pagination):

- filters: ``key=v1&key=v2`` matches either value (OR), several keys must all
  match (AND); values are converted like the attribute (booleans
  ``true``/``false``/``1``/``0`` in any case, integers), a bad value is a 400;
  a key the resource does not show (or one holding a dict) is a 400
  ``[...] is invalid attribute for filtering`` (the ``filter-validation``
  extension); an empty value matches the empty string
  (``empty-string-filtering``); a list attribute matches on membership; a list
  of objects (``fixed_ips``) takes ``key=value`` pairs: one element must
  match every key given, any of a key's values (``fixed_ips=ip_address=X&
  fixed_ips=subnet_id=Y``), and ``ip_address_substr=`` matches a substring
  (``ip-substring-filtering``);
- ``fields=a&fields=b``: only those keys (unknown ones ignored; empty: all);
- ``sort_key``/``sort_dir`` pairs (as many of each, ``asc``/``desc``, else
  400; a key that is not a scalar attribute is a 400); nulls sort first;
- ``limit`` (an integer >= 0, else 400; 0: no paging) adds ``id`` as the last
  sort key; ``marker`` is the id of the last item seen (404 if no such
  resource; ignored without ``limit``) and paging goes on from its sort
  position; ``page_reverse=True`` pages backwards from the marker (or from the
  end); ``<collection>_links`` then holds ``next`` unless a forward page came
  back short and ``previous`` unless a reverse page came back short, each
  the request's URL with ``marker`` (and for ``previous``
  ``page_reverse=True``) put last.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from apps.northbound import limits, schema
from topology.store import BadRequest

PAGING_PARAMS = frozenset({"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"})
SORTABLE = frozenset({"string", "integer", "boolean"})
TRUE, FALSE = frozenset({"true", "1"}), frozenset({"false", "0"})

Item = dict[str, Any]


def _bad(message: str, kind: str = "HTTPBadRequest") -> BadRequest:
    return BadRequest(kind, message)


def _invalid(value: str, reason: str) -> BadRequest:
    return _bad(f"Invalid input for operation: '{value}' {reason}.", "InvalidInput")


def to_bool(value: str) -> bool:
    """Neutron's ``convert_to_boolean`` for a query string value."""
    low = value.lower()
    if low in TRUE or low in FALSE:
        return low in TRUE
    raise _invalid(value, "cannot be converted to boolean")


def to_int(value: str) -> int:
    """Neutron's ``convert_to_int`` for a query string value."""
    try:
        return int(value)
    except ValueError:
        raise _invalid(value, "is not an integer") from None


@dataclass(frozen=True)
class Query:
    """A collection GET's query string, parsed and checked."""

    filters: list[Callable[[Item], bool]]
    fields: list[str]
    sorts: list[tuple[str, bool]]  # (key, ascending)
    limit: int | None
    marker: str | None
    page_reverse: bool


def parse(params: Any, resource: Any) -> Query:
    """Parse a WebOb ``MultiDict`` of query parameters for ``resource`` (400 on anything invalid)."""
    kinds = schema.value_kinds(resource)
    values: dict[str, list[str]] = {}
    for key, value in params.items():
        values.setdefault(key, []).append(value)
    limits.check_query(values, PAGING_PARAMS)  # before anything costs a pass over the collection
    bad = sorted(k for k in values if k not in PAGING_PARAMS and kinds.get(k) in (None, "object"))
    if bad:
        raise _bad(f"{bad} is invalid attribute for filtering")
    filters = [_filter(key, kinds[key], wanted) for key, wanted in values.items() if key not in PAGING_PARAMS]
    return Query(filters=filters, fields=[f for f in values.get("fields", []) if f],
                 sorts=_sorts(values, kinds), **_paging(values))


def _filter(key: str, kind: str, wanted: list[str]) -> Callable[[Item], bool]:
    if kind == "boolean":
        bools = {to_bool(w) for w in wanted}
        return lambda item: item.get(key) in bools and isinstance(item.get(key), bool)
    if kind == "integer":
        ints = {to_int(w) for w in wanted}
        return lambda item: not isinstance(item.get(key), bool) and item.get(key) in ints
    if kind == "array":
        strings = set(wanted)
        return lambda item: any(str(v) in strings for v in item.get(key) or ())
    if kind == "objects":
        return _objects_filter(key, wanted)
    strings = set(wanted)
    return lambda item: item.get(key) is not None and str(item.get(key)) in strings


def _objects_filter(key: str, wanted: list[str]) -> Callable[[Item], bool]:
    """``fixed_ips=ip_address=10.0.0.3&fixed_ips=subnet_id=S``: one element must match every key given."""
    by_key: dict[str, set[str]] = {}
    for pair in wanted:
        sub, sep, value = pair.partition("=")
        if not sep or not sub:
            raise _invalid(pair, f"is not a key=value pair for filtering on {key}")
        by_key.setdefault(sub, set()).add(value)

    def element_matches(element: Any) -> bool:
        if not isinstance(element, dict):
            return False
        for sub, values in by_key.items():
            if sub.endswith("_substr") and sub[: -len("_substr")] in element:
                text = str(element[sub[: -len("_substr")]])
                if not any(v in text for v in values):
                    return False
            elif str(element.get(sub)) not in values or element.get(sub) is None:
                return False
        return True

    return lambda item: any(element_matches(e) for e in item.get(key) or ())


def _sorts(values: dict[str, list[str]], kinds: dict[str, str]) -> list[tuple[str, bool]]:
    keys = [k for k in values.get("sort_key", []) if k]
    dirs = [d for d in values.get("sort_dir", []) if d]
    if len(keys) != len(dirs):
        raise _bad("The number of sort_keys and sort_dirs must be same")
    absent = [k for k in keys if kinds.get(k) not in SORTABLE]
    if absent:
        raise _bad(f"{absent} is invalid attribute for sort_keys")
    invalid = [d for d in dirs if d not in ("asc", "desc")]
    if invalid:
        raise _bad(f"{invalid} is invalid value for sort_dirs, valid value is 'asc' and 'desc'")
    return [(k, d == "asc") for k, d in zip(keys, dirs, strict=True)]


def _paging(values: dict[str, list[str]]) -> dict[str, Any]:
    raw = values.get("limit", ["0"])[0]
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise _bad(f"Bad limit request: Limit must be an integer 0 or greater and not '{raw}'.", "BadRequest")
    marker = values.get("marker", [None])[0] if limit else None
    reverse = values.get("page_reverse", ["False"])[0].lower() == "true"
    return {"limit": limit or None, "marker": marker or None, "page_reverse": reverse}


def _compare(a: Any, b: Any) -> int:
    if a is None or b is None:
        return (a is not None) - (b is not None)  # nulls first, like Neutron's emulated sort and SQL
    try:
        return (a > b) - (a < b)
    except TypeError:  # mixed types in one column: order by type name, never fail
        return _compare(type(a).__name__, type(b).__name__)


def _comparator(sorts: list[tuple[str, bool]]) -> Callable[[Item, Item], int]:
    def compare(x: Item, y: Item) -> int:
        for key, ascending in sorts:
            result = _compare(x.get(key), y.get(key))
            if result:
                return result if ascending else -result
        return 0
    return compare


def select(item: Item, fields: Iterable[str]) -> Item:
    """Only ``fields`` of ``item`` (all of it when no field is named)."""
    fields = [f for f in fields if f]
    return {k: v for k, v in item.items() if k in fields} if fields else item


def query_items(query: Query, items: list[Item], find: Callable[[str], Item]) -> list[Item]:
    """Filter, sort and page rendered ``items``; ``find(marker)`` renders the marker or raises a 404."""
    items = [i for i in items if all(f(i) for f in query.filters)]
    sorts = list(query.sorts)
    if query.limit and "id" not in {k for k, _ in sorts}:
        sorts.append(("id", True))
    compare = _comparator(sorts)
    if sorts:
        items.sort(key=functools.cmp_to_key(compare))
    if not query.limit:
        return items
    if query.marker is not None:
        marker = find(query.marker)
        if query.page_reverse:
            items = [i for i in items if compare(i, marker) < 0]
        else:
            items = [i for i in items if compare(i, marker) > 0]
    return items[-query.limit:] if query.page_reverse else items[: query.limit]


def links(query: Query, page: list[Item], path_url: str, params: Any) -> list[dict[str, str]]:
    """Neutron's pagination links for ``page`` (``params``: the request's query ``MultiDict``)."""
    if not query.limit:
        return []
    result = []
    short = len(page) < query.limit
    if not (short and not query.page_reverse):
        nxt = params.copy()
        nxt.pop("marker", None)
        if page:
            nxt["marker"] = page[-1]["id"]
        nxt.pop("page_reverse", None)
        result.append({"rel": "next", "href": f"{path_url}?{urlencode(list(nxt.items()))}"})
    if not (short and query.page_reverse):
        prev = params.copy()
        prev.pop("marker", None)
        if page:
            prev["marker"] = page[0]["id"]
        prev["page_reverse"] = "True"
        result.append({"rel": "previous", "href": f"{path_url}?{urlencode(list(prev.items()))}"})
    return result


def list_body(resource: Any, query: Query, path_url: str, params: Any, items: list[Item],
              find: Callable[[str], Item]) -> dict[str, Any]:
    """The JSON body of ``GET /v2.0/<collection>?<params>`` (parsed: ``query``) over the rendered ``items``."""
    page = query_items(query, items, find)
    body: dict[str, Any] = {resource.collection: [select(i, query.fields) for i in page]}
    page_links = links(query, page, path_url, params)
    if page_links:
        body[f"{resource.collection}_links"] = page_links
    return body

