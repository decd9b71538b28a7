"""Server options agree with what this project's clients do."""

from __future__ import annotations

from runtime.bootstrap import server_options
from runtime.channel_options import CHANNEL_OPTIONS
from runtime.config import ServiceSettings


def test_servers_accept_the_keepalive_pings_our_channels_send() -> None:
    # A channel pinging more often than the server allows without data gets GOAWAY
    # "too_many_pings" (seen with an idle health Watch between agent and rag after a minute).
    client = dict(CHANNEL_OPTIONS)
    server = dict(server_options(ServiceSettings()))
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < client["grpc.keepalive_time_ms"]
