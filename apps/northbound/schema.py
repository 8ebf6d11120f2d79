"""JSON Schemas of the API's resources, derived from the attribute maps and the views.

One source of truth for the OpenAPI document (:mod:`apps.northbound.openapi`)
and for how a collection filter converts its values
(:mod:`apps.northbound.collections`):

- a writable attribute's schema comes from its converter in
  :mod:`apps.northbound.attributes` (``integer(68, 9216)`` -> an integer in
  [68, 9216], ``or_none(x)`` -> x or null, ...). A converter may also carry its
  own schema as a ``schema`` attribute (``fn.schema = {...}``), which wins;
- the keys a resource shows are those its view renders for the resource's
  sample record, so a key a view adds is documented without anything else to
  edit; a key that no attribute map describes gets its schema from
  :data:`READ_ONLY` (Neutron's common read-only attributes) or, failing that,
  from the JSON type of the sample's value.

Schemas are JSON Schema 2020-12 (what OpenAPI 3.1 uses).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from apps.northbound import attributes
from topology.graph import TopologyGraph

Schema = dict[str, Any]

STRING = {"type": "string", "maxLength": 255}
# Read-only attributes that no attribute map lists (they are never accepted in a body).
READ_ONLY: dict[str, Schema] = {
    "id": {"type": "string"},
    "status": {"type": "string"},
    "created_at": {"type": ["string", "null"]},
    "updated_at": {"type": ["string", "null"]},
    "revision_number": {"type": "integer"},
    "subnets": {"type": "array", "items": {"type": "string"}},
    "subnetpool_id": {"type": ["string", "null"]},
    "binding:vif_type": {"type": "string"},
    "binding:vif_details": {"type": "object"},
    "connected": {"type": "boolean"},
}
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "object"))


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _boolean(free: dict, canonical: bool) -> Schema:
    if canonical:
        return {"type": "boolean"}
    # attributes.boolean: a JSON boolean, 0/1, or "true"/"false" in any case.
    return {"anyOf": [{"type": "boolean"}, {"enum": [0, 1]},
                      {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"}]}


def _integer(free: dict, canonical: bool) -> Schema:
    number = {"type": "integer", "minimum": free["lo"], "maximum": free["hi"]}
    if canonical:
        return number
    return {"anyOf": [number, {"type": "string", "pattern": r"^\s*-?[0-9]+\s*$"}]}


def _dict_of(free: dict, canonical: bool) -> Schema:
    return {"type": "object", "properties": {k: STRING for k in sorted(free["keys"])},
            "required": sorted(free["required"]), "additionalProperties": False}


# Converters of attributes.py by name ("integer" for the closure integer(lo, hi) returns); canonical:
# the form the API shows (a boolean), not every form a body may use ("true", 1).
_BUILDERS: dict[str, Callable[[dict, bool], Schema]] = {
    "string": lambda free, canonical: dict(STRING),
    "string_or_none": lambda free, canonical: _nullable(dict(STRING)),
    "boolean": _boolean,
    "integer": _integer,
    "or_none": lambda free, canonical: _nullable(converter_schema(free["convert"], canonical=canonical)),
    "one_of": lambda free, canonical: {"enum": list(free["choices"])},
    "list_of": lambda free, canonical: {"type": "array",
                                        "items": converter_schema(free["item"], canonical=canonical)},
    "dict_of": _dict_of,
    "str_map": lambda free, canonical: {"type": "object", "propertyNames": STRING, "additionalProperties": STRING},
    "any_dict": lambda free, canonical: {"type": "object"},
    "datapath_id": lambda free, canonical: {"type": "string"} if canonical else {"type": ["integer", "string"]},
}


def converter_schema(convert: Callable, *, canonical: bool = False) -> Schema:
    """The schema of the values ``convert`` accepts (``{}``, anything, for a converter it cannot read).

    ``canonical``: of the values it returns as the API shows them (booleans as booleans...).
    """
    own = getattr(convert, "schema", None)
    if isinstance(own, dict):
        return own
    if getattr(convert, "__module__", None) != attributes.__name__:
        return {}
    name = convert.__qualname__.split(".<locals>", 1)[0]
    builder = _BUILDERS.get(name)
    if builder is None:
        return {}
    free = inspect.getclosurevars(convert).nonlocals if "<locals>" in convert.__qualname__ else {}
    return builder(free, canonical)


def sample_view(resource: Any) -> dict[str, Any]:
    """What the resource's view renders for its sample record (an empty graph around it)."""
    return resource.render(TopologyGraph(), resource.sample)


def _value_schema(value: Any) -> Schema:
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return {"type": name}
    return {}


def shown_schema(resource: Any, key: str, sample_value: Any = None) -> Schema:
    """The schema of one key of a resource as the API shows it."""
    attr = resource.attributes.get(key)
    if attr is not None:
        schema = converter_schema(attr.convert, canonical=True)
        if schema:
            return schema
    if key in READ_ONLY:
        return READ_ONLY[key]
    return _value_schema(sample_value)


def _memo(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Memoise per resource object (resources are unhashable frozen dataclasses, and live forever)."""
    memo: dict[int, tuple[Any, Any]] = {}

    def wrapper(resource: Any) -> Any:
        hit = memo.get(id(resource))
        if hit is None or hit[0] is not resource:
            hit = memo[id(resource)] = (resource, fn(resource))
        return hit[1]
    return wrapper


@_memo
def _resource_schema(resource: Any) -> Schema:
    view = sample_view(resource)
    return {
        "type": "object",
        "properties": {k: shown_schema(resource, k, v) for k, v in view.items()},
        "required": list(view),
        "additionalProperties": False,
    }


def resource_schema(resource: Any) -> Schema:
    """The schema of one resource as GET shows it (every key always present, no other)."""
    return _resource_schema(resource)


def body_schema(resource: Any, *, create: bool) -> Schema:
    """The schema of a POST (``create``) or PUT body's inner object."""
    props = {name: converter_schema(attr.convert) for name, attr in resource.attributes.items()
             if (attr.post if create else attr.put)}
    schema: Schema = {"type": "object", "properties": props, "additionalProperties": False}
    required = [name for name, attr in resource.attributes.items() if create and attr.required]
    if required:
        schema["required"] = required
    return schema


def _types(schema: Schema) -> set[str]:
    found: set[str] = set()
    kind = schema.get("type")
    if isinstance(kind, str):
        found.add(kind)
    elif isinstance(kind, list):
        found.update(kind)
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []):
        found |= _types(sub)
    if "enum" in schema:
        found.update(_value_schema(v).get("type", "") for v in schema["enum"])
    return found


def _array_items(schema: Schema) -> Schema | None:
    if schema.get("type") == "array" or (isinstance(schema.get("type"), list) and "array" in schema["type"]):
        return schema.get("items", {})
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []):
        found = _array_items(sub)
        if found is not None:
            return found
    return None


@_memo
def _kinds(resource: Any) -> dict[str, str]:
    kinds = {}
    for key, value in sample_view(resource).items():
        if value is not None:
            kind = _value_schema(value).get("type", "string")
            if kind == "array":
                items = _array_items(shown_schema(resource, key, value)) or {}
                is_objects = "object" in _types(items) or (value and isinstance(value[0], dict))
                kind = "objects" if is_objects else "array"
        else:
            types = _types(shown_schema(resource, key)) - {"null"}
            kind = next((t for t in ("boolean", "integer", "array", "object") if t in types), "string")
        kinds[key] = kind
    return kinds


def value_kinds(resource: Any) -> dict[str, str]:
    """Each shown key's kind: boolean, integer, string, array (of scalars), objects (array of), object."""
    return _kinds(resource)
