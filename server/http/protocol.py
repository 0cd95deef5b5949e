"""uvicorn's HTTP/1.1 protocol (h11) with a header timeout.

uvicorn times out idle keep-alive connections, but not a client that opens a connection
and sends its request head slowly or never (slowloris): each such socket holds a
connection slot for as long as the client likes, and any byte it sends cancels uvicorn's
keep-alive timer. Here every request head (the first on a connection, and each next one
after a response) must be complete within ``header_timeout_s``, or the connection is
closed and one info line logged. Bodies have their own timeout (``body_timeout_s``,
server/http/bodies.py); WebSocket connections stop counting once upgraded.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pomstream.server.logs import log_event

log = logging.getLogger("pomstream.api")


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this header timeout."""

    class HeaderTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a whole request head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's head, if any, within the timeout too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout_s, self._late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _late(self) -> None:
            self._head_timer = None
            # IDLE: no whole head yet (a request being answered is never cut)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log_event(log, "api.header_timeout", client=self.client and self.client[0],
                          seconds=timeout_s)
                self.transport.close()

    return HeaderTimeoutProtocol
