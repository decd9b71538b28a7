"""A setting that cannot be read, as one line naming the variable and what it accepts.

pydantic reports a bad environment value as a multi-line ``ValidationError`` (or, for JSON it
cannot parse, a ``SettingsError``), which an entry point would print as a traceback.
``load_settings`` turns both into ``InvalidSetting`` whose message is one line, e.g.
``AGENTMESH_GATEWAY_PORT: Input should be a valid integer; expected an integer from 0 to 65535``,
and the entry points print that line and exit 2. Values are never echoed: some are secrets.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import AliasChoices, BaseModel, SecretStr, ValidationError, ValidationInfo
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsError

_S = TypeVar("_S", bound=BaseSettings)

# Exit code of a process that refused its configuration (as sysexits' EX_USAGE-like "bad input").
EXIT_INVALID_SETTING = 2


class InvalidSetting(Exception):
    """A setting that cannot be used; ``str()`` is one line naming the variable and what it accepts."""


def load_settings(settings_type: type[_S]) -> _S:
    """``settings_type()`` read from the environment and ``.env``, or ``InvalidSetting``."""
    try:
        return settings_type()
    except ValidationError as error:
        raise InvalidSetting(describe_validation_error(settings_type, error)) from None
    except SettingsError as error:
        raise InvalidSetting(describe_settings_error(settings_type, error)) from None


def reject_empty_path(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A ``mode="before"`` field validator: an empty string is no path (it would mean ".")."""
    field = cls.model_fields.get(info.field_name or "")
    if value == "" and field is not None and Path in _members(field.annotation):
        raise ValueError("an empty path names no file; unset the variable for the default")
    return value


def explain_os_error(settings: Iterable[BaseSettings], error: OSError) -> str | None:
    """One line for a file a setting names that could not be opened, naming that setting; else None."""
    if error.filename is None:
        return None
    missing = str(error.filename)
    for each in settings:
        for name in type(each).model_fields:
            if missing in _paths(getattr(each, name)):
                return f"{env_name(type(each), name)}: {missing}: {error.strerror or error}"
    return None


def _paths(value: Any) -> set[str]:
    """Every path inside a setting's value (nested models, lists, dicts)."""
    if isinstance(value, Path):
        return {str(value)}
    if isinstance(value, BaseModel):
        return {p for name in type(value).model_fields for p in _paths(getattr(value, name))}
    if isinstance(value, dict):
        return {p for item in value.values() for p in _paths(item)}
    if isinstance(value, list | tuple | set | frozenset):
        return {p for item in value for p in _paths(item)}
    return set()


def describe_validation_error(settings_type: type[BaseSettings], error: ValidationError) -> str:
    # One clause per variable: a JSON object missing two keys is one bad variable, not two.
    problems: dict[tuple[str, str], list[str]] = {}
    for e in error.errors():
        variable, problem, expected = _describe(settings_type, e["loc"], e["msg"], e.get("input"))
        problems.setdefault((variable, expected), []).append(problem)
    return " | ".join(_clause(variable, ", ".join(found), expected) for (variable, expected), found in problems.items())


def _clause(variable: str, problem: str, expected: str) -> str:
    if not expected:
        return f"{variable}: {problem}"
    if problem == "is empty":
        return f"{variable} is empty; expected {expected}"
    return f"{variable}: {problem}; expected {expected}"


def describe_settings_error(settings_type: type[BaseSettings], error: SettingsError) -> str:
    # pydantic-settings names the field in its message: 'error parsing value for field "routes" ...'.
    match = re.search(r'field "([^"]+)"', str(error))
    if match is None or match.group(1) not in settings_type.model_fields:
        return f"{settings_type.__name__}: {error}"
    cause = f" ({error.__cause__})" if error.__cause__ is not None else ""
    return _clause(*_describe(settings_type, (match.group(1),), f"not valid JSON{cause}", None))


def env_name(settings_type: type[BaseSettings], field_name: str) -> str:
    """The environment variable that sets ``field_name`` (its first alias, if it has any)."""
    alias = settings_type.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    if isinstance(alias, str):
        return alias
    return f"{settings_type.model_config.get('env_prefix', '')}{field_name}".upper()


def _describe(
    settings_type: type[BaseSettings], loc: tuple[int | str, ...], message: str, given: Any
) -> tuple[str, str, str]:
    """(variable, problem, what it accepts) of one pydantic error."""
    message = message.removeprefix("Value error, ")
    if not loc or loc[0] not in settings_type.model_fields:
        # A check across fields (a model validator): its message names them.
        return f"{settings_type.__name__} ({settings_type.model_config.get('env_prefix', '')}*)", message, ""
    name, field = str(loc[0]), settings_type.model_fields[str(loc[0])]
    variable, rest = env_name(settings_type, name), tuple(str(part) for part in loc[1:])
    delimiter = settings_type.model_config.get("env_nested_delimiter")
    if rest and delimiter:
        nested = delimiter.join((variable, *rest)).upper()
        if nested in os.environ:  # set as AGENTMESH_BREAKER__CONSECUTIVE_FAILURES, say
            variable, field, rest = nested, _nested_field(field, rest) or field, ()
    if given == "" and not rest:
        return variable, "is empty", accepts(field)
    where = f"{'.'.join(rest)}: " if rest else ""
    return variable, f"{where}{message}", accepts(field)


def _nested_field(field: FieldInfo, path: tuple[str, ...]) -> FieldInfo | None:
    for part in path:
        model = next((t for t in _members(field.annotation) if _is_model(t)), None)
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
    return field


def accepts(field: FieldInfo) -> str:
    """What a field accepts, in words: "an integer from 0 to 65535", "one of json, console", ..."""
    text = _form(field.annotation)
    bounds = _bounds(field.metadata)
    if bounds:
        text = f"{text} {bounds}"
    if type(None) in _members(field.annotation):
        text += ", or unset"
    return text


def _members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _form(annotation: Any) -> str:
    members = [m for m in _members(annotation) if m is not type(None)]
    if len(members) > 1:
        return " or ".join(_form(m) for m in members)
    annotation = members[0]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is SecretStr:
        return "a secret string"
    if annotation is str:
        return "a string"
    if annotation is Path:
        return "a path"
    if origin in (list, tuple, set, frozenset):
        return f"a JSON list of {_noun(args[0])}" if args else "a JSON list"
    if origin is dict:
        return f"a JSON object of {_noun(args[0])} to {_noun(args[1])}" if args else "a JSON object"
    if _is_model(annotation):
        fields = annotation.model_fields
        required = [n for n, f in fields.items() if f.is_required()]
        text = f"a JSON object with keys {', '.join(fields)}"
        return f"{text} ({', '.join(required)} required)" if required else text
    return getattr(annotation, "__name__", str(annotation))


def _noun(annotation: Any) -> str:
    """The plural of ``_form``: "strings", "lists of strings", "JSON objects"."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is str:
        return "strings"
    if annotation in (int, float):
        return "numbers"
    if annotation is bool:
        return "booleans"
    if origin in (list, tuple, set, frozenset):
        return f"lists of {_noun(args[0])}" if args else "lists"
    if origin is Literal:
        return " or ".join(str(a) for a in args)
    return "JSON objects"


def _bounds(metadata: list[Any]) -> str:
    low = next((f">= {m.ge}" for m in metadata if isinstance(m, annotated_types.Ge)), None)
    low = low or next((f"> {m.gt}" for m in metadata if isinstance(m, annotated_types.Gt)), None)
    high = next((f"<= {m.le}" for m in metadata if isinstance(m, annotated_types.Le)), None)
    high = high or next((f"< {m.lt}" for m in metadata if isinstance(m, annotated_types.Lt)), None)
    if low and high and low.startswith(">=") and high.startswith("<="):
        return f"from {low[3:]} to {high[3:]}"
    return " and ".join(b for b in (low, high) if b)
