"""Smile ID's V3 SDK (``usesmileid``) through sidkeyd: the SDK holds a placeholder, never the key.

    from sidkeyd.integrations.usesmileid import client

    smile = client("1622", "production")       # a usesmileid.Client
    smile.verifications.retrieve(job_id)

The SDK asks ``POST /v3/token`` for its token with the key in a header. Here its HTTP client
answers that request itself, from sidkeyd's ``POST /v1/token`` over the Unix socket; every
other request goes to Smile ID unchanged, with the token sidkeyd minted. When Smile ID answers
401 to a call that carried a token, sidkeyd is told (``/v1/report``, kind ``token``) before the
SDK, which retries once after a 401, asks for a new token. A daemon refusal (a policy, Smile ID
down) reaches the SDK as the daemon's status and error body, so the SDK raises its own error.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from typing import Any

import httpx
import usesmileid

from sidkeyd.client import Client
from sidkeyd.errors import ClientError, RequestFailedError

__all__ = ["SidkeydTransport", "client"]


class SidkeydTransport(httpx.BaseTransport):
    """An httpx transport: token requests to sidkeyd, the rest to ``inner`` (Smile ID)."""

    def __init__(
        self,
        environment: str,
        *,
        socket: str | os.PathLike[str] | None = None,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self._environment = environment
        self._sidkeyd = Client(socket)
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/v3/token"):
            return self._token(request)
        response = self._inner.handle_request(request)
        if response.status_code == 401 and "smileid-token" in request.headers:
            # The SDK's retry asks for a token anyway; the daemon's answer then decides.
            with contextlib.suppress(ClientError):
                self._sidkeyd.report_token(self._environment, 401)
        return response

    def _token(self, request: httpx.Request) -> httpx.Response:
        try:
            answer = self._sidkeyd.token(self._environment)
        except RequestFailedError as refused:
            error = {"code": refused.code, "message": refused.message}
            return httpx.Response(refused.status, json={"error": error}, request=request)
        token = answer.get("token")
        if not isinstance(token, str):
            error = {"code": "bad_answer", "message": "sidkeyd answered no token"}
            return httpx.Response(502, json={"error": error}, request=request)
        return httpx.Response(200, json={"token": token}, request=request)

    def close(self) -> None:
        self._inner.close()
        self._sidkeyd.close()


def client(
    partner_id: str,
    environment: str,
    *,
    smileid: str | None = None,
    socket: str | os.PathLike[str] | None = None,
    verify: bool | ssl.SSLContext = True,
    timeout: float = 30.0,
    **options: Any,
) -> usesmileid.Client:
    """A ``usesmileid.Client`` for sidkeyd's ``environment``, holding only a placeholder key.

    ``smileid`` is the SDK's environment (``sandbox`` or ``production``; by default the same
    name when it is one of them). ``verify`` is httpx's: an ``ssl.SSLContext`` trusting a
    proxy's or a test server's CA. Other ``options`` (``base_url``, ``max_retries``...) go to
    ``usesmileid.Client``.
    """
    if smileid is None:
        smileid = environment if environment in ("sandbox", "production") else "production"
    transport = SidkeydTransport(
        environment, socket=socket, inner=httpx.HTTPTransport(verify=verify)
    )
    return usesmileid.Client(
        partner_id=partner_id,
        api_key=f"sidkeyd:{environment}",  # the SDK insists on one; Smile ID never sees it
        environment=smileid,
        timeout=timeout,
        http_client=httpx.Client(transport=transport, timeout=timeout),
        **options,
    )
