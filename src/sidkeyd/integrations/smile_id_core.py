"""Make smile-id-core 3.x sign, and check signatures, through sidkeyd: one call.

    from sidkeyd.integrations.smile_id_core import install
    install()                              # or: with install(environment="production"): ...
    IdApi("085", "sidkeyd:production", 1)  # the placeholder api_key names the environment

The SDK signs in ``smile_id_core.Signature`` and ``Utilities.get_signature`` (bound by name in
four modules, and the package re-binds ``smile_id_core.Signature`` to the class); it checks
job-status answers with ``Signature.confirm_signature``; it sends through three static HTTP
helpers that hide the status from the caller. ``install`` replaces all of these and restores
them on ``uninstall``. A 401 from Smile ID is reported to sidkeyd, the signature re-made and
the call retried once; the signature dict the SDK holds is updated in place, so ``WebApi``'s
zip ``info.json`` and its polling use the fresh one too.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidkeyd.client import Client, ClientError, Signature, resolve_environment, status_of

__all__ = ["Installation", "install"]

log = logging.getLogger(__name__)

# (module, name) pairs that hold smile-id-core's Signature class or get_signature function.
SIGNATURE_NAMES = [
    ("smile_id_core", "Signature"),
    ("smile_id_core.Signature", "Signature"),
    ("smile_id_core.Utilities", "Signature"),
    ("smile_id_core.WebApi", "Signature"),
]
GET_SIGNATURE_NAMES = [
    ("smile_id_core.Utilities", "get_signature"),
    ("smile_id_core.IdApi", "get_signature"),
    ("smile_id_core.BusinessVerification", "get_signature"),
    ("smile_id_core.WebApi", "get_signature"),
]
# (module, class, static method): every signed POST goes through one of these.
HTTP_HELPERS = [
    ("smile_id_core.Utilities", "Utilities", "execute_post"),
    ("smile_id_core.Utilities", "Utilities", "execute_http"),
    ("smile_id_core.WebApi", "WebApi", "execute_http"),
]
REMEMBERED_SIGNATURES = 4096
_installed: Installation | None = None
_install_lock = threading.Lock()


class SignedParams(dict[str, str]):
    """The SDK's ``SignatureParams`` dict, weakly referable so a retry can update it in place."""


@dataclass
class _Issued:
    environment: str
    key_version: str
    params: weakref.ref[SignedParams] | None


class _Ledger:
    """Which environment and key version made each recent signature (no key material)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued: OrderedDict[str, _Issued] = OrderedDict()

    def remember(self, signed: dict[str, Any], params: SignedParams | None) -> None:
        issued = _Issued(
            str(signed["environment"]),
            str(signed["key_version"]),
            None if params is None else weakref.ref(params),
        )
        with self._lock:
            self._issued[str(signed["signature"])] = issued
            while len(self._issued) > REMEMBERED_SIGNATURES:
                self._issued.popitem(last=False)

    def find(self, signature: object) -> _Issued | None:
        with self._lock:
            return self._issued.get(signature) if isinstance(signature, str) else None


class Installation:
    """The patches one ``install`` made; ``uninstall()`` or leave the ``with`` to undo them."""

    def __init__(self, environment: str | None, client: Client) -> None:
        self.environment = environment
        self.client = client
        self.ledger = _Ledger()
        self._undo: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"Installation(environment={self.environment!r}, socket={self.client.socket_path!r})"

    def __enter__(self) -> Installation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def uninstall(self) -> None:
        global _installed
        with _install_lock:
            while self._undo:
                self._undo.pop()()
            if _installed is self:
                _installed = None

    # -- what the SDK calls instead ------------------------------------------------------

    def signature_class(self) -> type[Signature]:
        installation = self

        class SdkSignature(Signature):
            """smile-id-core's ``Signature(partner_id, api_key)``, signed by sidkeyd."""

            def __init__(
                self, partner_id: str | None = None, api_key: str | None = None, **kw: Any
            ) -> None:
                kw.setdefault("environment", installation.environment)
                kw.setdefault("client", installation.client)
                super().__init__(partner_id, api_key, **kw)

            def generate_signature(self, timestamp: str | None = None) -> dict[str, str]:
                signed = self.sign(timestamp)
                params = SignedParams(signature=signed["signature"], timestamp=signed["timestamp"])
                installation.ledger.remember(signed, params)
                return params

        SdkSignature.__name__ = SdkSignature.__qualname__ = "Signature"
        return SdkSignature

    def get_signature(self, partner_id: str, api_key: str) -> SignedParams:
        """``Utilities.get_signature``: a dict the ledger can find and refresh in place."""
        params = self.signature_class()(partner_id, api_key).generate_signature()
        assert isinstance(params, SignedParams)
        return params

    def retrying(self, send: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        """Wrap an SDK HTTP helper: a 401 on a sidkeyd signature is reported and retried once."""

        def send_signed(url: str, payload: Any) -> Any:
            response = send(url, payload)
            if status_of(response) != 401 or not isinstance(payload, dict):
                return response
            issued = self.ledger.find(payload.get("signature"))
            if issued is None:  # not signed through sidkeyd: nothing to report
                return response
            answer = self.client.report(issued.environment, issued.key_version, 401)
            log.warning(
                "smile_id.signature_rejected",
                extra={
                    "environment": issued.environment,
                    "key_version": issued.key_version,
                    "now_key_version": answer.get("key_version"),
                    "path": url.rsplit("/", 1)[-1],
                },
            )
            fresh = self.client.sign(issued.environment)
            held = issued.params() if issued.params is not None else None
            renewed = SignedParams(signature=fresh["signature"], timestamp=fresh["timestamp"])
            if held is not None:
                held.update(renewed)  # the SDK reuses this dict (WebApi: zip, polling)
            self.ledger.remember(fresh, held if held is not None else renewed)
            return send(url, {**payload, **renewed})

        return send_signed

    # -- patching ------------------------------------------------------------------------

    def patch(self) -> None:
        signature_class = self.signature_class()
        for module, name in SIGNATURE_NAMES:
            self._replace(importlib.import_module(module), name, signature_class)
        for module, name in GET_SIGNATURE_NAMES:
            self._replace(importlib.import_module(module), name, self.get_signature)
        for module, cls_name, name in HTTP_HELPERS:
            cls = getattr(importlib.import_module(module), cls_name)
            original = cls.__dict__[name]
            self._replace(cls, name, staticmethod(self.retrying(original.__func__)), original)

    def _replace(self, owner: Any, name: str, value: Any, original: Any = None) -> None:
        # importlib, not attribute access: the package re-binds ``smile_id_core.Signature``
        # (the submodule's name) to the class.
        saved = getattr(owner, name) if original is None else original
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, saved))


def install(
    environment: str | None = None, socket: str | os.PathLike[str] | None = None
) -> Installation:
    """Route every signature smile-id-core makes or checks through sidkeyd.

    ``environment`` fixes the sidkeyd environment; without it each SDK object's api_key
    placeholder (``"sidkeyd:<env>"``) or ``$SIDKEYD_ENVIRONMENT`` names it. ``socket`` is the
    daemon's socket (else ``$SIDKEYD_SOCKET``, else the default).
    """
    global _installed
    if environment is not None:
        resolve_environment(environment, None)
    with _install_lock:
        if _installed is not None:
            raise ClientError("sidkeyd is already installed into smile_id_core: uninstall first")
        installation = Installation(environment, Client(socket))
        installation.patch()
        _installed = installation
    return installation
