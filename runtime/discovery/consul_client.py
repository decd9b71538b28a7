"""An asyncio Consul HTTP client: py-consul's ``consul.aio`` with a connector aiohttp 3.10+ accepts.

py-consul 1.8's ``consul.aio.HTTPClient`` builds its ``aiohttp.TCPConnector`` with the deprecated
``verify_ssl``/``ssl_context`` arguments, which warn on every client (and fail under ``-W error``).
Everything else in ``consul.aio`` is right, so only the session construction is replaced here;
the API surface (``agent``, ``health``, ``kv``, ...) is py-consul's own.
"""

from __future__ import annotations

import ssl
import urllib.parse
from typing import Any

import aiohttp
import consul
import consul.aio
from consul import base

__all__ = ["CONSUL_ERRORS", "ConsulAddress", "open_consul"]


class _HTTPClient(consul.aio.HTTPClient):  # type: ignore[misc]
    def __init__(
        self,
        host: str,
        port: int,
        scheme: str,
        *,
        verify: bool | str = True,
        cert: Any = None,
        request_timeout: float | None = None,
    ) -> None:
        # Deliberately skip consul.aio.HTTPClient.__init__ (it builds the deprecated connector).
        base.HTTPClient.__init__(self, host, port, scheme, verify, cert)
        ssl_option: ssl.SSLContext | bool = False
        if scheme == "https":
            context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            if cert:
                context.load_cert_chain(*cert) if isinstance(cert, tuple) else context.load_cert_chain(cert)
            ssl_option = context
        timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_option), timeout=timeout)


class _Consul(consul.aio.Consul):  # type: ignore[misc]
    def __init__(self, *, request_timeout: float | None, **kwargs: Any) -> None:
        self._request_timeout = request_timeout
        super().__init__(**kwargs)

    def http_connect(
        self, host: str, port: int, scheme: str, verify: bool | str = True, cert: Any = None
    ) -> _HTTPClient:
        return _HTTPClient(host, port, scheme, verify=verify, cert=cert, request_timeout=self._request_timeout)


class ConsulAddress:
    """Where the agent is: ``host:port`` or ``scheme://host:port`` (the ``CONSUL_HTTP_ADDR`` form)."""

    def __init__(self, address: str, *, token: str | None = None) -> None:
        parsed = urllib.parse.urlparse(address if "//" in address else "//" + address)
        if not parsed.hostname or parsed.port is None:
            raise ValueError(f"Consul address {address!r} must look like host:port or http://host:port")
        self.scheme = parsed.scheme or "http"
        self.host = parsed.hostname
        self.port = parsed.port
        self.token = token

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def open_consul(address: ConsulAddress, *, request_timeout: float | None = None) -> consul.aio.Consul:
    """A ``consul.aio.Consul`` bound to the running loop; close it with ``await client.close()``.

    ``request_timeout`` bounds each HTTP request; leave it ``None`` for clients that make blocking
    queries (their requests legitimately last as long as ``wait``).
    """
    client: consul.aio.Consul = _Consul(
        host=address.host,
        port=address.port,
        scheme=address.scheme,
        token=address.token,
        request_timeout=request_timeout,
    )
    return client


# What a Consul call raises when the agent is unreachable, slow, or answers with an error status.
CONSUL_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, consul.ConsulException, TimeoutError)
