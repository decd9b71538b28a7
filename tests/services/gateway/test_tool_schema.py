"""JSON Schemas of messages: what the schema accepts is what json_format parses into the message.

One message with every shape a request can take (scalars of each width, enums, repeated, maps with
string and integer keys, nested and self-referencing messages, oneofs, well-known types), built as a
descriptor here, so the test does not depend on which shapes the services' protos happen to use.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from google.api import field_behavior_pb2
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)

from services.gateway.tool_schema import SchemaBuilder, source_comments

F = descriptor_pb2.FieldDescriptorProto


def _field(
    name: str, number: int, kind: F.Type.ValueType, *, type_name: str = "", repeated: bool = False, **extra: Any
) -> F:
    field = F(name=name, number=number, type=kind, json_name=_camel(name))
    if type_name:  # set only for message and enum fields, or the pool refuses the file
        field.type_name = type_name
    field.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    for key, value in extra.items():
        setattr(field, key, value)
    return field


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="schema_test/v1/shapes.proto",
        package="schema_test.v1",
        syntax="proto3",
        dependency=[
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/wrappers.proto",
            "google/api/field_behavior.proto",
        ],
    )
    color = file.enum_type.add(name="Color")
    color.value.add(name="COLOR_UNSPECIFIED", number=0)
    color.value.add(name="COLOR_RED", number=1)

    shapes = file.message_type.add(name="Shapes")
    required = _field("name", 1, F.TYPE_STRING)
    required.options.Extensions[field_behavior_pb2.field_behavior].append(field_behavior_pb2.REQUIRED)
    output_only = _field("create_time", 2, F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    output_only.options.Extensions[field_behavior_pb2.field_behavior].append(field_behavior_pb2.OUTPUT_ONLY)
    shapes.field.extend(
        [
            required,
            output_only,
            _field("count", 3, F.TYPE_INT32),
            _field("big", 4, F.TYPE_INT64),
            _field("unsigned", 5, F.TYPE_UINT32),
            _field("ratio", 6, F.TYPE_DOUBLE),
            _field("flag", 7, F.TYPE_BOOL),
            _field("blob", 8, F.TYPE_BYTES),
            _field("color", 9, F.TYPE_ENUM, type_name=".schema_test.v1.Color"),
            _field("colors", 10, F.TYPE_ENUM, type_name=".schema_test.v1.Color", repeated=True),
            _field("tags", 11, F.TYPE_MESSAGE, type_name=".schema_test.v1.Shapes.TagsEntry", repeated=True),
            _field("by_id", 12, F.TYPE_MESSAGE, type_name=".schema_test.v1.Shapes.ByIdEntry", repeated=True),
            _field("child", 13, F.TYPE_MESSAGE, type_name=".schema_test.v1.Shapes"),
            _field("when", 14, F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"),
            _field("wait", 15, F.TYPE_MESSAGE, type_name=".google.protobuf.Duration"),
            _field("extra", 16, F.TYPE_MESSAGE, type_name=".google.protobuf.Struct"),
            _field("maybe", 17, F.TYPE_MESSAGE, type_name=".google.protobuf.Int32Value"),
            _field("by_text", 18, F.TYPE_STRING, oneof_index=0),
            _field("by_number", 19, F.TYPE_INT32, oneof_index=0),
        ]
    )
    shapes.oneof_decl.add(name="selector")
    for entry_name, key_kind in (("TagsEntry", F.TYPE_STRING), ("ByIdEntry", F.TYPE_INT64)):
        entry = shapes.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.extend([_field("key", 1, key_kind), _field("value", 2, F.TYPE_STRING)])
    # Comments as protoc records them (--include_source_info): message 0, field 0.
    file.source_code_info.location.add(path=[4, 0], leading_comments=" Shapes has every shape.\n")
    file.source_code_info.location.add(path=[4, 0, 2, 0], leading_comments=" The name.\n")
    return file


@pytest.fixture(scope="module")
def shapes() -> tuple[dict[str, Any], type[Any]]:
    pool = descriptor_pool.DescriptorPool()
    # In dependency order: field_behavior.proto extends descriptor.proto's options.
    for module in (descriptor_pb2, timestamp_pb2, duration_pb2, struct_pb2, wrappers_pb2, field_behavior_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = _file()
    pool.Add(file)
    message = pool.FindMessageTypeByName("schema_test.v1.Shapes")
    schema = SchemaBuilder(source_comments([file]), for_input=True).schema(message)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}, message_factory.GetMessageClass(
        message
    )


VALID = [
    {"name": "a"},
    {
        "name": "a",
        "count": -3,
        "big": "9007199254740993",
        "unsigned": 7,
        "ratio": 0.5,
        "flag": True,
        "blob": "aGk=",
        "color": "COLOR_RED",
        "colors": ["COLOR_RED", "COLOR_UNSPECIFIED"],
        "tags": {"team": "billing"},
        "by_id": {"12": "x"},
        "child": {"name": "b", "child": {"name": "c"}},
        "when": "2026-01-31T12:00:00Z",
        "wait": "1.5s",
        "extra": {"any": ["json", 1, None]},
        "maybe": None,
        "by_text": "t",
    },
    {"name": "a", "big": 12, "maybe": 4, "by_number": 2},
]
INVALID = [
    {},  # the REQUIRED field missing
    {"name": "a", "create_time": "2026-01-31T12:00:00Z"},  # OUTPUT_ONLY is not an input
    {"name": "a", "count": "3x"},
    {"name": "a", "count": 2**31},
    {"name": "a", "big": "12.5"},
    {"name": "a", "color": "COLOR_BLUE"},
    {"name": "a", "by_id": {"twelve": "x"}},
    {"name": "a", "wait": "90 seconds"},
    {"name": "a", "child": {"count": 1}},  # the nested message's REQUIRED field
    {"name": "a", "nickname": "n"},
]


@pytest.mark.parametrize("example", VALID)
def test_what_the_schema_accepts_json_format_parses(shapes: tuple[dict[str, Any], type[Any]], example: Any) -> None:
    schema, message = shapes
    jsonschema.validate(example, schema)
    json_format.ParseDict(example, message())


@pytest.mark.parametrize("example", INVALID)
def test_the_schema_refuses_what_the_message_cannot_be(shapes: tuple[dict[str, Any], type[Any]], example: Any) -> None:
    schema, _ = shapes
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, schema)


def test_descriptions_come_from_the_proto_comments(shapes: tuple[dict[str, Any], type[Any]]) -> None:
    schema, _ = shapes
    assert schema["description"].startswith("Shapes has every shape.")
    assert "At most one of each group: by_text, by_number." in schema["description"]
    assert schema["properties"]["name"]["description"] == "The name."
    assert schema["required"] == ["name"]
    assert schema["properties"]["child"] == {"$ref": "#/$defs/schema_test.v1.Shapes"}
