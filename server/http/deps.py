"""Who is asking and within which limits: auth, owners, rates and slots of running work.

Routes take these as FastAPI ``Annotated`` dependencies: :data:`RuntimeDep` (the
process's :class:`~pomstream.server.roles.Runtime`), :data:`SettingsDep`, :data:`Key`
(the checked API key, None without keys) and :data:`Owner` (the key's owner, counted
against its request rate). WebSockets check the same rules before accepting
(:func:`ws_owner`).

Tenancy: every video and session records its owner (a hash of the key that made it, as
the limits use); a key sees and acts on its own only, anything else is a 404 (no
existence leak); ``admin_api_keys`` see everything. Without keys, every loopback client
is the one owner ``local``.

Auth: with ``api_keys`` set, every route but the health checks needs ``Authorization:
Bearer <key>``; WebSockets may also pass ``?api_key=<key>`` or offer the subprotocol
``bearer.<key>`` (browsers cannot set headers on a WebSocket). Without keys the server only
answers clients on loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request, WebSocket

from pomstream.server.http.errors import ApiError, unavailable
from pomstream.server.runtime import Runtime
from pomstream.server.settings import Settings, is_loopback
from pomstream.server.store import JobQueue, QueueUnavailable


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def check_access(settings: Settings, client_host: str | None, key: str | None) -> None:
    if not settings.all_keys:  # bound to loopback; a proxy could still forward
        if client_host is not None and not is_loopback(client_host):
            raise ApiError(403, "this server has no API keys configured and only accepts "
                           "connections from loopback", code="forbidden",
                           type="permission_error")
        return
    if key is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       code="missing_api_key", type="authentication_error")
    if not settings.accepts(key):
        raise ApiError(401, "invalid API key", code="invalid_api_key",
                       type="authentication_error")


def owner_of(key: str | None) -> str:
    """Whose limits a request counts against: a hash of its API key (never the key
    itself in Redis), or ``local`` for the loopback clients of a server without keys."""
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:32] if key else "local"


def check_rate(queue: JobQueue, settings: Settings, owner: str) -> None:
    wait = queue.hit_rate(owner, settings.rate_limit_per_minute)
    if wait:
        raise ApiError(429, f"more than {settings.rate_limit_per_minute} requests a minute "
                       f"with this API key; retry in {wait} s", code="rate_limit_exceeded",
                       type="rate_limit_error", headers={"Retry-After": str(wait)})


def claim_slot(queue: JobQueue, settings: Settings, owner: str, job_id: str,
               submitted: bool = False) -> None:
    if not queue.claim_slot(owner, job_id, settings.max_active_per_key,
                            submitted=submitted):
        raise ApiError(429, f"this API key already has {settings.max_active_per_key} videos "
                       "or live sessions queued or running; wait for one to finish",
                       code="too_many_active", type="rate_limit_error")


def submit_within_limit(queue: JobQueue, settings: Settings, owner: str,
                        payload: dict[str, Any], before=None) -> None:
    """Claim a slot of ``owner``'s running work, run ``before`` (if given), submit the
    job; the slot is released when that fails (ApiError 429 when no slot is free)."""
    job_id = payload["id"]
    claim_slot(queue, settings, owner, job_id)
    try:
        if before is not None:
            before()
        queue.submit(payload)
    except BaseException:
        with contextlib.suppress(Exception):  # the first failure is the one to report
            queue.release_slot(owner, job_id)
        raise
    queue.confirm_slot(owner, job_id)


def authorized(request: Request, settings: SettingsDep) -> str | None:
    """The request's API key once checked (None on a server without keys)."""
    key = bearer(request.headers.get("authorization"))
    check_access(settings, request.client.host if request.client else None, key)
    return key


Key = Annotated[str | None, Depends(authorized)]


@dataclass(frozen=True)
class Tenant:
    """Who a request acts for: ``owner`` (the hash of its key, ``local`` without keys) and
    whether the key is an admin's, which sees and acts on everyone's jobs."""

    owner: str
    admin: bool = False

    def owns(self, record: dict[str, Any]) -> bool:
        """May this tenant see and act on the job of ``record``? (Records made before
        tenancy belong to ``local``.)"""
        return self.admin or record.get("owner", "local") == self.owner

    @property
    def listing(self) -> str:
        """The owner whose listing this tenant reads (``*``: everyone's, for admins)."""
        return "*" if self.admin else self.owner


def rate_limited_tenant(key: Key, rt: RuntimeDep, settings: SettingsDep) -> Tenant:
    """The request's tenant, after counting the request against its key's rate."""
    tenant = Tenant(owner_of(key), settings.is_admin(key))
    check_rate(rt.queue, settings, tenant.owner)
    return tenant


Owner = Annotated[Tenant, Depends(rate_limited_tenant)]


def ws_key(ws: WebSocket) -> tuple[str | None, str | None]:
    """(key, subprotocol to answer with) from the header, the query or a subprotocol."""
    key = bearer(ws.headers.get("authorization")) or ws.query_params.get("api_key")
    offered = ws.scope.get("subprotocols") or []
    for proto in offered:
        if key is None and proto.startswith("bearer."):
            key = proto[len("bearer."):]
    return key, ("pomstream" if "pomstream" in offered else None)


async def deny(ws: WebSocket, error: ApiError) -> None:
    """Refuse a WebSocket handshake with an HTTP error (or close code 1008 if the server
    cannot send an HTTP response on a WebSocket request)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(error.response())
    else:
        await ws.close(code=1008, reason=error.message[:120])


async def ws_owner(ws: WebSocket) -> tuple[Tenant, str | None] | None:
    """Check a WebSocket's key and rate before accepting it: (tenant, subprotocol to answer
    with), or None after refusing the handshake."""
    key, subprotocol = ws_key(ws)
    settings, rt = ws.app.state.settings, ws.app.state.runtime
    try:
        check_access(settings, ws.client.host if ws.client else None, key)
        await anyio.to_thread.run_sync(check_rate, rt.queue, settings, owner_of(key))
    except ApiError as exc:
        await deny(ws, exc)
        return None
    except QueueUnavailable:
        await deny(ws, unavailable())
        return None
    return Tenant(owner_of(key), settings.is_admin(key)), subprotocol
