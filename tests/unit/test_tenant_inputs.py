"""Tenants' patterns, schemas and documents cost time linear in their size: nothing a
tenant writes can hold an executor's event loop. Each case here ran for seconds to
minutes (or crashed) on Python's backtracking engine and unbounded parsers; the suite's
per-test timeout is what fails if that comes back."""

from __future__ import annotations

import asyncio

import pytest
from jsonschema import Draft202012Validator

from dataplane.evals.graders import grade, read_verdict
from dataplane.guardrails import pii
from dataplane.tools.builtin import CallContext, ToolFailure, calculator
from pilothouse import jsonschemas, patterns
from pilothouse.v1 import eval_pb2

CATASTROPHIC = r"(a+)+$"
EVIL = "a" * 50_000 + "!"


@pytest.mark.parametrize(
    "pattern", [r"(a)\1", r"foo(?=bar)", r"(?<!x)y", "a" * 1025, r"(a{1000}){1000}", "("]
)
def test_patterns_re2_cannot_run_are_refused(pattern: str) -> None:
    assert patterns.problem(pattern) is not None


def test_a_backtracking_pattern_runs_in_linear_time() -> None:
    assert patterns.problem(CATASTROPHIC) is None
    assert not patterns.search(CATASTROPHIC, EVIL)
    assert patterns.search(CATASTROPHIC, "aaa")


def test_eval_regex_grader_runs_on_re2() -> None:
    expectation = eval_pb2.Expectation(grader=eval_pb2.GRADER_REGEX, value=CATASTROPHIC)
    assert grade(expectation, EVIL).score == 0.0
    refused = eval_pb2.Expectation(grader=eval_pb2.GRADER_REGEX, value=r"(a)\1")
    assert "RE2" in grade(refused, "aa").detail


def test_judge_replies_are_read_in_linear_time() -> None:
    assert read_verdict("{" * 200_000).score == 0.0
    assert read_verdict('I think {"score": 0.5, "reason": "half"} overall').score == 0.5


SCHEMAS = [
    {"type": "string", "pattern": "^[a-z]+$"},
    {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}},
    {
        "type": "object",
        "properties": {"id": {"type": "string"}},
        "patternProperties": {"^x_": {"type": "integer"}},
        "additionalProperties": False,
    },
    {
        "type": "object",
        "patternProperties": {"^x_": {}},
        "additionalProperties": {"type": "string"},
    },
]
DOCUMENTS = [
    "abc",
    "aB",
    {"x_a": 1},
    {"x_a": "no"},
    {"id": "1", "x_b": 2},
    {"id": "1", "y": 2},
    {"y": "s"},
    {"y": 3},
    {"x_a": 1, "y": "z"},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_schemas_judge_documents_as_jsonschema_does(schema: dict[str, object]) -> None:
    ours, theirs = jsonschemas.validator(schema), Draft202012Validator(schema)
    for document in DOCUMENTS:
        assert ours.is_valid(document) == theirs.is_valid(document), (schema, document)


def test_schema_patterns_run_on_re2() -> None:
    schema = {
        "type": "object",
        "patternProperties": {CATASTROPHIC: {"type": "integer"}},
        "properties": {"s": {"type": "string", "pattern": CATASTROPHIC}},
        "additionalProperties": False,
    }
    assert jsonschemas.problem(schema) is None
    validator = jsonschemas.validator(schema)
    assert not validator.is_valid({"s": EVIL})
    assert not validator.is_valid({EVIL: 1})


@pytest.mark.parametrize(
    "schema, problem",
    [
        ({"type": "string", "pattern": r"(a)\1"}, "RE2"),
        ({"patternProperties": {"(?=a)": {}}}, "RE2"),
        ({"patternProperties": {"^a": {}}, "unevaluatedProperties": False}, "unevaluated"),
        ({"type": "strin"}, "not a valid JSON Schema"),
        (
            {"items": {"items": {"items": {}}}}
            | {"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
            "deeper",
        ),
        ({"description": "x" * 70_000}, "bytes"),
    ],
)
def test_schemas_are_refused_with_a_reason(schema: dict[str, object], problem: str) -> None:
    assert problem in (jsonschemas.problem(schema) or "")


@pytest.mark.parametrize("depth", [65, 200_000])
def test_documents_nested_too_deep_are_refused(depth: int) -> None:
    with pytest.raises(ValueError, match="nests deeper"):
        jsonschemas.parse_document("[" * depth + "]" * depth)


def test_documents_within_the_depth_parse() -> None:
    assert jsonschemas.parse_document("[" * 64 + "]" * 64)


@pytest.mark.parametrize(
    "crafted",
    ["x.a" * 43_690, "1.1.1.1 " * 16_384, "a:" * 65_536, "+1 555 " * 18_724, "a@b.cd " * 18_724],
)
def test_pii_redaction_of_128_kib_of_crafted_input(crafted: str) -> None:
    assert len(pii.redact(crafted)) > 0


@pytest.mark.parametrize(
    "expression",
    [
        "(((9**99)**99)**99)**3",
        "9**9**9**9",
        "10**1000*10**1000*10**1000",
        "1e308*10",
        "-" * 450 + "1",
        "(-8)**0.5",
    ],
)
def test_the_calculator_refuses_what_it_cannot_do_quickly(expression: str) -> None:
    with pytest.raises(ToolFailure):
        asyncio.run(calculator({"expression": expression}, CallContext("t", "a")))


def test_the_calculator_still_calculates() -> None:
    result = asyncio.run(calculator({"expression": "2**100 + 7 // 2"}, CallContext("t", "a")))
    assert result == {"result": 2**100 + 3}


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        (
            {"fields": {"type": {"stringValue": "object"}}},
            "protobuf Struct's own encoding at /fields",
        ),
        (
            {"type": "object", "properties": {"a": {"type": {"string_value": "string"}}}},
            "protobuf Struct's own encoding at /properties/a/type",
        ),
        (
            {"type": "object", "properties": {"a": {"type": None}}},
            "at /properties/a/type: null is not valid",
        ),
        ({"type": "object", "properties": {"a": None}}, "at /properties/a: null is not of type"),
    ],
)
def test_a_schema_a_client_built_wrong_is_refused_in_words_a_user_reads(
    schema: dict[str, object], says: str
) -> None:
    why = jsonschemas.problem(schema)
    assert why is not None and says in why, why
    assert "None" not in why, "JSON, not Python"


def test_properties_that_share_a_struct_field_name_are_a_schema_still() -> None:
    schema = {
        "type": "object",
        "properties": {"fields": {"type": "object"}, "stringValue": {"type": "string"}},
    }
    assert jsonschemas.problem(schema) is None
