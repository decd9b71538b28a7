"""The policy source: strict parsing, and consistency with the gRPC contracts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf.descriptor_pb2 import MethodDescriptorProto
from pydantic import ValidationError

from mesh.contracts import contract_problems, load_methods, missing_error_detail_files
from mesh.policy import DEFAULT_POLICY_PATH, Policy, Retries, Route, load_policy

DESCRIPTOR_SET = Path("gen/agentmesh.pb")
Methods = dict[str, MethodDescriptorProto]


def _raw() -> dict[str, object]:
    raw: dict[str, object] = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    return raw


def test_the_committed_policy_parses() -> None:
    policy = load_policy()
    assert policy.spiffe_id("agent") == "spiffe://agentmesh.local/ns/default/sa/agent"


def test_a_misspelt_key_is_an_error_not_a_silently_missing_setting() -> None:
    raw = _raw()
    raw["services"]["rag"]["outlier_detection"]["consecutive_erors"] = 3  # type: ignore[index]
    with pytest.raises(ValidationError, match="consecutive_erors"):
        Policy.model_validate(raw)


def test_canary_weights_must_add_up_to_100() -> None:
    raw = _raw()
    raw["services"]["agent"]["canary"]["weights"] = {"v1": 90, "v2": 20}  # type: ignore[index]
    with pytest.raises(ValidationError, match="add up to 100"):
        Policy.model_validate(raw)


def test_a_caller_must_be_a_known_service_or_the_edge() -> None:
    raw = _raw()
    raw["services"]["rag"]["callers"]["billing"] = ["*"]  # type: ignore[index]
    with pytest.raises(ValidationError, match="unknown callers"):
        Policy.model_validate(raw)


def test_a_public_method_must_be_one_the_edge_may_call() -> None:
    raw = _raw()
    # Reflection hidden from the edge, yet still listed as callable without a token: a contradiction.
    callers = raw["services"]["gateway"]["callers"]  # type: ignore[index]
    callers["edge"] = [p for p in callers["edge"] if "Reflection" not in p]
    with pytest.raises(ValidationError, match="not among the methods the edge may call"):
        Policy.model_validate(raw)


def test_edge_http_routes_need_the_upstreams_http_port() -> None:
    raw = _raw()
    del raw["local"]["instances"]["gateway-v1"]["http"]  # type: ignore[index]
    with pytest.raises(ValidationError, match="need an http port on every gateway instance"):
        Policy.model_validate(raw)
    raw = _raw()
    del raw["services"]["gateway"]["http_port"]  # type: ignore[index]
    with pytest.raises(ValidationError, match=r"need services\.gateway\.http_port"):
        Policy.model_validate(raw)


def test_the_last_route_must_catch_every_method() -> None:
    raw = _raw()
    raw["services"]["rag"]["routes"].pop()  # type: ignore[index]
    with pytest.raises(ValidationError, match='must match "\\*"'):
        Policy.model_validate(raw)


def test_only_the_agent_runs_apart_by_role() -> None:
    raw = _raw()
    rag = raw["services"]["rag"]  # type: ignore[index]
    del rag["replicas"]
    rag["roles"] = {"serve": 2, "execute": 2}
    with pytest.raises(ValidationError, match=r"services\.rag\.roles: only agent runs apart by role"):
        Policy.model_validate(raw)


def test_roles_need_the_shared_database() -> None:
    raw = _raw()
    del raw["state"]["databases"]["agent"]  # type: ignore[index]
    with pytest.raises(ValidationError, match=r"services\.agent\.roles needs state\.databases\.agent"):
        Policy.model_validate(raw)


def test_a_service_gives_replicas_or_roles_not_both() -> None:
    raw = _raw()
    raw["services"]["agent"]["replicas"] = 2  # type: ignore[index]
    with pytest.raises(ValidationError, match="exactly one of replicas"):
        Policy.model_validate(raw)


def test_durations_need_a_unit() -> None:
    raw = _raw()
    raw["services"]["rag"]["routes"][0]["timeout"] = "3"  # type: ignore[index]
    with pytest.raises(ValidationError, match="not a duration"):
        Policy.model_validate(raw)


@pytest.fixture
def methods() -> Methods:
    if not DESCRIPTOR_SET.exists():
        pytest.fail("gen/agentmesh.pb is missing: run `make gen`")
    return load_methods(DESCRIPTOR_SET)


def test_the_policy_agrees_with_the_contracts(methods: Methods) -> None:
    assert contract_problems(load_policy(), methods) == []


def test_retrying_a_method_with_side_effects_is_caught(methods: Methods) -> None:
    policy = load_policy()
    agent = policy.services["agent"]
    unsafe = Route(
        methods=["/agentmesh.agent.v1.AgentService/CreateRun"],
        timeout="1s",
        retries=Retries(attempts=2, per_try_timeout="500ms", retry_on=["unavailable"]),
    )
    changed = policy.model_copy(
        update={
            "services": {
                **policy.services,
                "agent": agent.model_copy(update={"routes": [unsafe, *agent.routes]}),
            }
        }
    )

    [problem] = contract_problems(changed, methods)
    assert "CreateRun" in problem and "NO_SIDE_EFFECTS or IDEMPOTENT" in problem


def test_a_method_pattern_naming_no_method_is_caught(methods: Methods) -> None:
    raw = _raw()
    raw["services"]["rag"]["callers"]["agent"] = ["/agentmesh.rag.v1.RagService/Serch"]  # type: ignore[index]

    [problem] = contract_problems(Policy.model_validate(raw), methods)
    assert "Serch matches no method" in problem


def test_the_descriptor_set_describes_the_error_details_the_edge_renders_as_json(methods: Methods) -> None:
    assert missing_error_detail_files(DESCRIPTOR_SET) == [], (
        "add google/rpc/status.proto and error_details.proto (protos/third_party/googleapis) to the"
        " descriptor set in `make gen`"
    )
