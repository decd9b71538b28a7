"""The vendored A2A contract is the one a2a-sdk was generated from, and the descriptor set carries it."""

from __future__ import annotations

from pathlib import Path

from a2a.types import a2a_pb2
from google.protobuf import descriptor_pb2

DESCRIPTOR_SET = Path(__file__).resolve().parents[3] / "gen" / "agentmesh.pb"


def _from_descriptor_set(name: str) -> descriptor_pb2.FileDescriptorProto:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    return next(f for f in files if f.name == name)


def test_the_descriptor_set_holds_the_sdks_a2a_proto_under_the_same_name_and_schema() -> None:
    sdk = descriptor_pb2.FileDescriptorProto()
    a2a_pb2.DESCRIPTOR.CopyToProto(sdk)
    vendored = _from_descriptor_set(sdk.name)
    vendored.ClearField("source_code_info")
    # The SDK is generated with buf managed mode, which rewrites only the per-language file options.
    sdk.ClearField("options")
    vendored.ClearField("options")
    assert vendored == sdk


def test_the_descriptor_set_describes_the_a2a_service_with_its_http_rules() -> None:
    service = next(s for s in _from_descriptor_set("a2a.proto").service if s.name == "A2AService")
    assert {m.name for m in service.method} >= {
        "SendMessage",
        "SendStreamingMessage",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "SubscribeToTask",
        "GetExtendedAgentCard",
    }
