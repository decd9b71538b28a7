"""`python -m services.<name>`'s first step: read the settings, and refuse a bad one before importing the server.

A service's server (grpc, SQLAlchemy, its stores and engines) takes seconds of CPU to import; a
process given a setting it cannot use only prints one line and exits 2. So the settings are read
first, from modules that do not import the server, and the server's modules only once they pass.
(The settings types still import grpc and SQLAlchemy through the policy models they embed: about
0.5 s of the 0.7 s a refusal now takes, against about 2 s with the server's own modules.)
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, TypeVar, cast

from runtime.config import ServiceSettings
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config.settings import DynamicSettings
from runtime.settings_errors import EXIT_INVALID_SETTING, InvalidSetting, load_settings

if TYPE_CHECKING:
    from runtime.bootstrap import ServiceBuild

_S = TypeVar("_S", bound=ServiceSettings)


def run_service(settings_type: type[_S], server_module: str) -> int:
    """Read the service's, discovery's and the live settings from env/.env, then import and serve.

    ``server_module`` names the module whose ``build`` makes the server (``services.agent.server``);
    it is imported only once the settings are read. A setting that cannot be used ends the process
    with one line on stderr naming the variable and what it accepts (exit 2), whether it is found
    here or while building the server (``runtime.bootstrap.serve_service``).
    """
    try:
        settings = load_settings(settings_type)
        discovery = load_settings(DiscoverySettings)
        dynamic = load_settings(DynamicSettings)
    except InvalidSetting as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID_SETTING
    build = cast("ServiceBuild[_S]", importlib.import_module(server_module).build)
    # Imported here, not at the top, so that a refused setting never pays for grpc.aio's server side.
    from runtime.bootstrap import serve_service  # noqa: PLC0415

    return serve_service(settings, discovery, dynamic, build)
