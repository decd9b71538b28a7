"""JSON Schema of protobuf messages, as their proto3 JSON form (``google.protobuf.json_format``) reads them.

What an MCP tool's ``inputSchema`` says is what the gateway will accept: field names as in the
proto (json_format also takes the lowerCamel names, but one spelling keeps schemas strict),
enums by value name, 64-bit integers as numbers or decimal strings, maps as objects, the
well-known types in their JSON forms, ``required`` from ``google.api.field_behavior`` REQUIRED, and
OUTPUT_ONLY fields left out of a request's schema. Each message is one ``$defs`` entry, so
recursive types (``google.protobuf.Struct``) stay finite. Descriptions are the proto comments,
read from the descriptor set's source info (``protoc --include_source_info``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor, descriptor_pb2

JsonSchema = dict[str, Any]
Comments = Mapping[str, str]

_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
# json_format writes 64-bit integers as strings (JavaScript numbers lose precision past 2**53) and
# reads either form.
_INT64 = {"type": ["integer", "string"], "pattern": "^-?[0-9]+$", "minimum": -(2**63), "maximum": 2**63 - 1}
_UINT64 = {"type": ["integer", "string"], "pattern": "^[0-9]+$", "minimum": 0, "maximum": 2**64 - 1}
_FD = descriptor.FieldDescriptor
_SCALARS: dict[int, JsonSchema] = {
    _FD.TYPE_STRING: {"type": "string"},
    _FD.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    _FD.TYPE_BOOL: {"type": "boolean"},
    _FD.TYPE_DOUBLE: {"type": "number"},
    _FD.TYPE_FLOAT: {"type": "number"},
    _FD.TYPE_INT32: _INT32,
    _FD.TYPE_SINT32: _INT32,
    _FD.TYPE_SFIXED32: _INT32,
    _FD.TYPE_UINT32: _UINT32,
    _FD.TYPE_FIXED32: _UINT32,
    _FD.TYPE_INT64: _INT64,
    _FD.TYPE_SINT64: _INT64,
    _FD.TYPE_SFIXED64: _INT64,
    _FD.TYPE_UINT64: _UINT64,
    _FD.TYPE_FIXED64: _UINT64,
}
_WRAPPERS = {
    "google.protobuf.DoubleValue": _FD.TYPE_DOUBLE,
    "google.protobuf.FloatValue": _FD.TYPE_FLOAT,
    "google.protobuf.Int64Value": _FD.TYPE_INT64,
    "google.protobuf.UInt64Value": _FD.TYPE_UINT64,
    "google.protobuf.Int32Value": _FD.TYPE_INT32,
    "google.protobuf.UInt32Value": _FD.TYPE_UINT32,
    "google.protobuf.BoolValue": _FD.TYPE_BOOL,
    "google.protobuf.StringValue": _FD.TYPE_STRING,
    "google.protobuf.BytesValue": _FD.TYPE_BYTES,
}
# The JSON forms json_format gives the well-known types (developers.google.com/protocol-buffers/docs/proto3#json).
_WELL_KNOWN: dict[str, JsonSchema] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339, e.g. 2026-01-31T12:00:00Z",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "seconds with an 's' suffix, e.g. 1.5s",
    },
    "google.protobuf.FieldMask": {"type": "string", "description": "comma-separated lowerCamel field paths"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {"type": "object", "required": ["@type"], "properties": {"@type": {"type": "string"}}},
}


def _nullable(schema: JsonSchema) -> JsonSchema:
    """A wrapper type's JSON form: its value, or null for "not set"."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


_WELL_KNOWN.update({name: _nullable(_SCALARS[kind]) for name, kind in _WRAPPERS.items()})


def source_comments(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    """Leading comments by full name: services, methods, messages, fields, enums and their values."""
    comments: dict[str, str] = {}
    for file in files:
        by_path = {
            tuple(location.path): location.leading_comments.strip()
            for location in file.source_code_info.location
            if location.leading_comments.strip()
        }
        prefix = f"{file.package}." if file.package else ""
        # Paths are field numbers in descriptor.proto: 4 message_type, 5 enum_type, 6 service.
        for i, msg in enumerate(file.message_type):
            _message_comments(msg, (4, i), prefix, by_path, comments)
        for i, top_enum in enumerate(file.enum_type):
            _enum_comments(top_enum, (5, i), prefix, by_path, comments)
        for i, service in enumerate(file.service):
            _put(comments, f"{prefix}{service.name}", by_path.get((6, i)))
            for j, method in enumerate(service.method):
                _put(comments, f"{prefix}{service.name}.{method.name}", by_path.get((6, i, 2, j)))
    return comments


_Paths = Mapping[tuple[int, ...], str]


def _message_comments(
    proto: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str, by_path: _Paths, out: dict[str, str]
) -> None:
    name = f"{scope}{proto.name}"
    _put(out, name, by_path.get(path))
    for i, field in enumerate(proto.field):  # 2 field, 3 nested_type, 4 enum_type
        _put(out, f"{name}.{field.name}", by_path.get((*path, 2, i)))
    for i, nested in enumerate(proto.nested_type):
        _message_comments(nested, (*path, 3, i), f"{name}.", by_path, out)
    for i, nested_enum in enumerate(proto.enum_type):
        _enum_comments(nested_enum, (*path, 4, i), f"{name}.", by_path, out)


def _enum_comments(
    proto: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str, by_path: _Paths, out: dict[str, str]
) -> None:
    name = f"{scope}{proto.name}"
    _put(out, name, by_path.get(path))
    for i, value in enumerate(proto.value):
        # Enum values are scoped beside their enum, as in C++, but named here under it.
        _put(out, f"{name}.{value.name}", by_path.get((*path, 2, i)))


def _put(comments: dict[str, str], name: str, comment: str | None) -> None:
    if comment:
        comments[name] = " ".join(line.strip() for line in comment.splitlines())


def field_behaviors(field: descriptor.FieldDescriptor) -> frozenset[int]:
    options = field.GetOptions()
    return frozenset(options.Extensions[field_behavior_pb2.field_behavior])


class SchemaBuilder:
    """JSON Schemas of messages from one descriptor pool, with their comments as descriptions.

    ``for_input`` leaves OUTPUT_ONLY fields out (a request's schema); without it every field is
    described (a response's schema, for ``outputSchema``).
    """

    def __init__(self, comments: Comments, *, for_input: bool) -> None:
        self._comments = comments
        self._for_input = for_input

    def schema(self, message: descriptor.Descriptor) -> JsonSchema:
        """A self-contained schema: the message at the root, every message it uses in ``$defs``."""
        defs: dict[str, JsonSchema] = {}
        root = self._message(message, defs)
        return {"type": "object", **root, "$defs": defs} if defs else {"type": "object", **root}

    def _message(self, message: descriptor.Descriptor, defs: dict[str, JsonSchema]) -> JsonSchema:
        properties: dict[str, JsonSchema] = {}
        required: list[str] = []
        for field in message.fields:
            behaviors = field_behaviors(field)
            if self._for_input and field_behavior_pb2.OUTPUT_ONLY in behaviors:
                continue
            properties[field.name] = self._described(self._field(field, defs), field.full_name)
            if field_behavior_pb2.REQUIRED in behaviors:
                required.append(field.name)
        body: JsonSchema = {"properties": properties, "additionalProperties": False}
        if required:
            body["required"] = required
        oneofs = [o for o in message.oneofs if not _synthetic(o)]
        if oneofs:
            # proto3 JSON refuses two members of one oneof; said in words rather than a `not`
            # clause, which few model clients read.
            groups = "; ".join(", ".join(f.name for f in o.fields) for o in oneofs)
            body["description"] = _join(self._comments.get(message.full_name), f"At most one of each group: {groups}.")
        elif message.full_name in self._comments:
            body["description"] = self._comments[message.full_name]
        return body

    def _field(self, field: descriptor.FieldDescriptor, defs: dict[str, JsonSchema]) -> JsonSchema:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value, key = entry.fields_by_name["value"], entry.fields_by_name["key"]
            schema: JsonSchema = {"type": "object", "additionalProperties": self._single(value, defs)}
            if key.type != _FD.TYPE_STRING:
                schema["propertyNames"] = {"pattern": "^(true|false)$" if key.type == _FD.TYPE_BOOL else "^-?[0-9]+$"}
            return schema
        if field.is_repeated:
            return {"type": "array", "items": self._single(field, defs)}
        return self._single(field, defs)

    def _single(self, field: descriptor.FieldDescriptor, defs: dict[str, JsonSchema]) -> JsonSchema:
        if field.enum_type is not None:
            return self._enum(field.enum_type)
        message = field.message_type
        if message is not None:
            name = message.full_name
            if name in _WELL_KNOWN:
                return dict(_WELL_KNOWN[name])
            if name not in defs:
                defs[name] = {}  # placed first, so a message that contains itself refers back
                defs[name] = {"type": "object", **self._message(message, defs)}
            return {"$ref": f"#/$defs/{name}"}
        return dict(_SCALARS[field.type])

    def _enum(self, enum: descriptor.EnumDescriptor) -> JsonSchema:
        lines = [
            f"{value.name}: {self._comments[f'{enum.full_name}.{value.name}']}"
            for value in enum.values
            if f"{enum.full_name}.{value.name}" in self._comments
        ]
        return {
            "type": "string",
            "enum": [value.name for value in enum.values],
            **({"description": " ".join(lines)} if lines else {}),
        }

    def _described(self, schema: JsonSchema, full_name: str) -> JsonSchema:
        comment = self._comments.get(full_name)
        if comment is None:
            return schema
        if "$ref" in schema:
            # Siblings of $ref are honoured from draft 2019-09 on; allOf keeps older readers right too.
            return {"allOf": [schema], "description": comment}
        return {**schema, "description": _join(comment, schema.get("description"))}


def _synthetic(oneof: descriptor.OneofDescriptor) -> bool:
    """proto3 `optional` makes a one-field oneof of its own, which is no choice at all."""
    return len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}"


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)
