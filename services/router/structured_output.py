"""The checks of a `response_format` JSON schema before it reaches a replica.

The llama.cpp model turns the schema into a grammar with llama-cpp-python's converter
(`json_schema_to_gbnf`), and llama.cpp's grammar parser takes the grammar or refuses it. A
refused grammar used to take its replica down (llama-cpp-python adds the NULL sampler of a
refused grammar to the sampler chain unchecked), and the router then retried the request on
the next replica. The model now checks the grammar with the parser itself; the router runs the
same converter and refuses, naming the field, what cannot fit the bounds below before any
replica sees it.

The bounds, measured with llama-cpp-python 0.3.36 (SmolLM2, one CPU thread, 12 ms a token
without a grammar):
- The converter writes a repetition out: maxLength n is n optional groups nested one in the
  other. llama.cpp refuses a group that holds 2000 rules or more (MAX_REPETITION_THRESHOLD in
  llama-grammar.cpp), two a level: 1000 is the most it takes. maxLength 100000 overflowed the
  parser's recursion (a segfault); 10**9 would take gigabytes to write out.
- Each enum value and anyOf/oneOf branch is a path the grammar follows at once: 256 of them
  cost 39 ms a token, 1000 100 ms, 10000 4.5 s. Optional properties likewise: 128 cost 38 ms.
- Property names and enum or const strings go into the grammar as the converter quotes them: it
  leaves the backslashes JSON writes (before a quote, for a control character) unescaped, which
  breaks the grammar or changes the text, and writes a character beyond U+FFFF as two
  surrogates, which the model then writes out as invalid UTF-8.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any

import fastjsonschema
import jsonschema
from llama_cpp import llama_grammar

from shared.errors import InvalidArgument

MAX_SCHEMA_BYTES = 32 * 1024  # the schema's JSON, compact
MAX_SCHEMA_DEPTH = 16  # subschemas within subschemas
MAX_PROPERTIES = 128  # in one object
MAX_REPETITIONS = 1000  # each of REPETITIONS, and each {m,n} of a pattern
MAX_ALTERNATIVES = 256  # enum values and anyOf/oneOf branches, summed over the schema
MAX_LITERAL_CHARS = 1024  # one enum or const value's JSON
MAX_ENUMERATED_INTEGERS = 128  # values of small integer ranges written out as enums, summed over the schema
# What the converter makes of the whole schema; the llama.cpp model checks the same numbers.
MAX_GRAMMAR_BYTES = 128 * 1024
MAX_GRAMMAR_NESTING = 1000  # groups within groups in one rule: each optional repetition is one more

REPETITIONS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
               "maxContains")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SCHEMA_VALUES = ("items", "additionalItems", "additionalProperties", "contains", "not", "if", "then", "else",
                  "propertyNames", "unevaluatedItems", "unevaluatedProperties")
# In JSON written with ensure_ascii off, a backslash is an escape (see the module's docstring).
_UNQUOTABLE = re.compile("[\\\\\ud800-\udfff\U00010000-\U0010ffff]")
# The escapes llama.cpp's grammar parser knows (parse_char); the converter copies a pattern's others (\\d,
# \\w, \\.) into the grammar, which llama.cpp then refuses.
_GBNF_ESCAPES = frozenset('xuUtrn\\"[]')
# A grammar's text less its string literals, character classes and comments: what is left holds its groups.
_NOT_GROUPS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*')
# Compiled once: jsonschema's own check takes 25 ms of the event loop on a 16 KB schema (draft 2020-12's
# 90 ms), this 2. Draft-07's metaschema lets the newer drafts' keywords through unchecked.
_metaschema = fastjsonschema.compile(jsonschema.Draft7Validator.META_SCHEMA, use_default=False)


def _bounded(build_repetition: Callable[..., str]) -> Callable[..., str]:
    """The converter's _build_repetition, refusing to write out a repetition llama.cpp would refuse."""

    def build(item_rule: str, min_items: int, max_items: int | None, *args: Any, **kwargs: Any) -> str:
        if max(min_items, max_items or 0) > MAX_REPETITIONS:
            raise ValueError(f"a repetition of {max(min_items, max_items or 0)}; at most {MAX_REPETITIONS}")
        return build_repetition(item_rule, min_items, max_items, *args, **kwargs)

    return build


# Every repetition the converter writes out (a length, a count, a pattern's {m,n}) goes through this
# one function. A pattern's quantifiers are read by the converter's rules, not Python's re (it reads
# "{ 1, 5 }" as one, re as text): bounding them here is the only exact way.
llama_grammar._build_repetition = _bounded(llama_grammar._build_repetition)


def check_json_schema(schema: dict[str, Any], param: str) -> str:
    """The schema's JSON as the replica gets it, or a 400 naming the field at fault."""
    try:
        # Integral numbers as integers: a gRPC Struct holds only doubles, and the converter repeats
        # nothing 5.0 times.
        guide = json.dumps(json.loads(json.dumps(schema, allow_nan=False), parse_float=_integral),
                           separators=(",", ":"))
    except ValueError as exc:
        raise _refused(param, "holds a number JSON cannot write (NaN or Infinity)") from exc
    except RecursionError as exc:
        raise _refused(param, "nests too deeply") from exc
    if len(guide.encode()) > MAX_SCHEMA_BYTES:
        raise _refused(param, f"is {len(guide.encode())} bytes of JSON; at most {MAX_SCHEMA_BYTES}")
    if '"items":{}' in guide or '"items":true' in guide:
        guide = json.dumps(_without_any_items(json.loads(guide)), separators=(",", ":"))
    if '"integer"' in guide and ('"minimum"' in guide or '"exclusiveMinimum"' in guide):
        guide = json.dumps(_enumerated_ranges(json.loads(guide), [MAX_ENUMERATED_INTEGERS]), separators=(",", ":"))
    _check(guide, param)
    return guide


def _enumerated_ranges(node: Any, budget: list[int]) -> Any:
    """The schema with each small integer range (`"type": "integer"` with a lower and an upper bound, 32
    values at most, MAX_ENUMERATED_INTEGERS in all) as the enum of its values: the converter ignores
    minimum and maximum (any integer passes its grammar), an enum it writes as alternatives."""
    if not isinstance(node, dict):
        return node
    low, high = _integer_bounds(node)
    if low is not None and high is not None and 0 < high - low + 1 <= min(32, budget[0]) and "enum" not in node:
        budget[0] -= high - low + 1
        kept = {k: v for k, v in node.items()
                if k not in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}
        return {**kept, "enum": list(range(low, high + 1))}
    return _with_subschemas(node, lambda sub: _enumerated_ranges(sub, budget))


def _integer_bounds(node: dict[str, Any]) -> tuple[int | None, int | None]:
    """The inclusive bounds of an integer schema (draft 6's numeric exclusive bounds included), or None."""
    if node.get("type") != "integer":
        return None, None
    bounds = []
    for inclusive, exclusive, step in (("minimum", "exclusiveMinimum", 1), ("maximum", "exclusiveMaximum", -1)):
        value, beyond = node.get(inclusive), node.get(exclusive)
        if beyond is True and _is_number(value):  # draft 4: a flag on the inclusive bound
            beyond = value
        if _is_number(beyond):
            value = math.floor(beyond) + 1 if step == 1 else math.ceil(beyond) - 1
        elif _is_number(value):
            value = math.ceil(value) if step == 1 else math.floor(value)
        bounds.append(int(value) if _is_number(value) else None)
    return bounds[0], bounds[1]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _without_any_items(node: Any) -> Any:
    """The schema less each `"items": {}` or `"items": true` (any item, as no `items` says): the converter
    reads an empty one as falsy, then looks for prefixItems and fails (KeyError), refusing a valid schema.
    Only subschemas are walked: an enum or const value, or a property named items, stays as it is."""
    if not isinstance(node, dict):
        return node
    kept = {keyword: value for keyword, value in node.items()
            if not (keyword == "items" and (value == {} or value is True))}
    return _with_subschemas(kept, _without_any_items)


def _with_subschemas(node: dict[str, Any], change: Callable[[Any], Any]) -> dict[str, Any]:
    """node with `change` applied to each of its subschemas (not to enum or const values, nor to the names
    of properties): the walk _without_any_items and _enumerated_ranges share."""
    out = {}
    for keyword, value in node.items():
        if keyword in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: change(sub) for name, sub in value.items()}
        elif keyword in _SCHEMA_LISTS and isinstance(value, list):
            value = [change(sub) for sub in value]
        elif keyword in _SCHEMA_VALUES:
            value = change(value)
        out[keyword] = value
    return out


# A client sends the same schema request after request: checked once (up to 25 ms of the event loop for a
# 16 KB schema of 120 objects, the converter's share most of it). A refusal raises, and is not kept.
@functools.lru_cache(maxsize=256)
def _check(guide: str, param: str) -> None:
    schema = json.loads(guide)
    _check_bounds(schema, param)
    try:
        _metaschema(schema)
    except fastjsonschema.JsonSchemaValueException as exc:
        # fastjsonschema names the field as the schema's path from "data": data.allOf[0].type
        raise _refused(param + exc.name.removeprefix("data"), exc.message.removeprefix(exc.name).strip()) from exc
    _check_grammar(guide, param)


def _check_bounds(schema: dict[str, Any], param: str) -> None:
    """Each subschema against the bounds, before the converter or the metaschema's check reads it."""
    alternatives = 0
    todo = [(schema, param, 1)]
    while todo:
        node, where, depth = todo.pop()
        if not isinstance(node, dict):  # true, false, or not a schema at all (the metaschema's check says)
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise _refused(where, f"is a subschema {depth} levels deep; at most {MAX_SCHEMA_DEPTH}")
        for keyword in REPETITIONS:
            value = node.get(keyword)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_REPETITIONS:
                raise _refused(f"{where}.{keyword}", f"is {str(value):.20}; at most {MAX_REPETITIONS}")
        properties = node.get("properties")
        if isinstance(properties, dict):
            if len(properties) > MAX_PROPERTIES:
                raise _refused(f"{where}.properties", f"has {len(properties)} properties; at most {MAX_PROPERTIES}")
            for name in properties:
                _check_literal(name, f"{where}.properties", f"property name {name[:40]!r}")
        if "const" in node:
            _check_literal(node["const"], f"{where}.const", "the value")
        for keyword in ("enum", "anyOf", "oneOf"):
            if isinstance(node.get(keyword), list):
                alternatives += len(node[keyword])
                if alternatives > MAX_ALTERNATIVES:
                    raise _refused(f"{where}.{keyword}", f"brings the enum values and anyOf/oneOf branches of the "
                                   f"schema to {alternatives}; at most {MAX_ALTERNATIVES}")
        for i, value in enumerate(node.get("enum") if isinstance(node.get("enum"), list) else ()):
            _check_literal(value, f"{where}.enum[{i}]", "the value")
        if isinstance(node.get("pattern"), str):
            _check_grammar(json.dumps({"type": "string", "pattern": node["pattern"]}), f"{where}.pattern")
        for keyword in _SCHEMA_MAPS:
            if isinstance(node.get(keyword), dict):
                todo += [(sub, f"{where}.{keyword}.{key}", depth + 1) for key, sub in node[keyword].items()]
        for keyword in _SCHEMA_LISTS:
            if isinstance(node.get(keyword), list):
                todo += [(sub, f"{where}.{keyword}[{i}]", depth + 1) for i, sub in enumerate(node[keyword])]
        todo += [(node[keyword], f"{where}.{keyword}", depth + 1) for keyword in _SCHEMA_VALUES if keyword in node]


def _check_literal(value: Any, param: str, what: str) -> None:
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > MAX_LITERAL_CHARS:
        raise _refused(param, f"{what} is {len(text)} characters of JSON; at most {MAX_LITERAL_CHARS}")
    if _UNQUOTABLE.search(text):
        raise _refused(param, f"{what} holds a character structured output cannot write: a quote, a backslash, "
                       "a control character or one beyond U+FFFF")


def _check_grammar(guide: str, param: str) -> None:
    """What the converter makes of the schema: refused where it cannot, or llama.cpp would not take it."""
    try:
        grammar = llama_grammar.json_schema_to_gbnf(guide)
    except Exception as exc:  # noqa: BLE001 - the converter's assertions and ValueErrors say why
        raise _refused(param, f"cannot be turned into a grammar: {str(exc)[:200]}") from exc
    if len(grammar.encode()) > MAX_GRAMMAR_BYTES:
        raise _refused(param, f"makes a grammar of {len(grammar.encode())} bytes; at most {MAX_GRAMMAR_BYTES}: "
                       "fewer or shorter properties, enum values or repetitions")
    if unknown := sorted({m[1] for m in re.finditer(r"\\(.)", grammar, re.DOTALL)} - _GBNF_ESCAPES):
        raise _refused(param, f"makes a grammar with the escape \\{unknown[0]}, which llama.cpp's grammars do not "
                       "know: write a character class ([0-9] for \\d) or the character itself")
    if (nesting := grammar_nesting(grammar)) > MAX_GRAMMAR_NESTING:
        raise _refused(param, f"makes a grammar that nests {nesting} groups deep; at most {MAX_GRAMMAR_NESTING}: "
                       "fewer nested repetitions")


def grammar_nesting(grammar: str) -> int:
    """How deep the groups of a GBNF grammar nest, at most (a rule per line, as the converter writes them)."""
    deepest = depth = 0
    for found in re.finditer(r"[()\n]", _NOT_GROUPS.sub("", grammar)):
        char = found[0]
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
        elif char == "\n":
            depth = 0
    return deepest


def _integral(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _refused(param: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{param} {why}", reason="INVALID_JSON_SCHEMA", param=param)
