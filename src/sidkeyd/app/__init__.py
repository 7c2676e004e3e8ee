"""The request handling core: ``Request -> Response``, no I/O but the audit log.

Routes (see docs/protocol.md):
    POST /v1/sign     {"environment", "timestamp"?}                  ``key_routes.SigningRoutes``
    POST /v1/verify   {"environment", "timestamp", "signature"}
    POST /v1/report   {"environment", "key_version", "status"}       Smile ID rejected a signature
    POST /v1/refresh  {"environment"?}     admin peers only          ``admin_routes.AdminRoutes``
    GET  /v1/status                        reduced for non-admins
    GET  /v1/health

Sign, verify and report are allowed only to the peers an environment's ``allow`` lists
(``access.EnvironmentGate``). Handlers that wait on a backend return an awaitable; everything
else answers synchronously so that the sign path never creates a task.
"""

from sidkeyd.app.access import Engine
from sidkeyd.app.core import Application, Result

__all__ = ["Application", "Engine", "Result"]
