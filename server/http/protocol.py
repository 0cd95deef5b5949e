"""uvicorn's HTTP/1.1 protocol (h11) with a header timeout.

uvicorn times out idle keep-alive connections, but not a client that opens a connection
and sends its request head slowly or never (slowloris): each such socket holds a
connection slot for as long as the client likes, and any byte it sends cancels uvicorn's
keep-alive timer. Here a connection may wait on its client for at most
``header_timeout_s`` whenever no request is being answered: for a whole request head (the
first on a connection, and each next one), and for the rest of a body the server answered
without reading (an early 413 or 401). Then it is closed and one info line logged. The
timer runs from the start of such a wait; bytes that trickle in do not reset it. While the
app answers a request it is off (bodies have their own timeout, ``body_timeout_s``), and a
WebSocket stops counting once upgraded.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from pomstream.server.logs import log_event

log = logging.getLogger("pomstream.api")

_WAITING_STATES = (h11.IDLE, h11.SEND_BODY, h11.DONE)  # the client's, in HTTP/1.1 terms


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this header timeout."""

    class HeaderTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._update()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._update()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # a new wait on the client starts now
            self._update()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting_on_client(self) -> bool:
            """No request is being answered, and the connection is not a WebSocket."""
            if self.transport.get_protocol() is not self:  # upgraded: a WebSocket now
                return False
            answering = self.cycle is not None and not self.cycle.response_complete
            return self.conn.their_state in _WAITING_STATES and not answering

        def _update(self) -> None:
            if self.transport.is_closing() or not self._waiting_on_client():
                self._disarm()
            elif self._head_timer is None:  # armed once per wait, not per byte
                self._head_timer = self.loop.call_later(timeout_s, self._late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _late(self) -> None:
            self._head_timer = None
            if self._waiting_on_client() and not self.transport.is_closing():
                log_event(log, "api.header_timeout", client=self.client and self.client[0],
                          seconds=timeout_s)
                self.transport.close()

    return HeaderTimeoutProtocol
