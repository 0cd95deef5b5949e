"""Structured logs: JSON lines on stderr, one key per field of ``log_event``.

Secrets never reach them: an ``api_key=`` in a URL (a browser's WebSocket carries its key
there; uvicorn logs the path of every WebSocket it accepts) is redacted in every line."""

from __future__ import annotations

import json
import logging
import re
import sys

# api_key=, also percent-encoded (api%5Fkey=), which the server decodes and accepts too
_SECRET_IN_URL = re.compile(r"(api(?:_|%5f)key(?:=|%3d))[^&\s\"'#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``...?api_key=k1&x=1`` -> ``...?api_key=[redacted]&x=1``."""
    return _SECRET_IN_URL.sub(r"\1[redacted]", text)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    """A structured log line: the JSON formatter writes ``fields`` as keys."""
    logger.log(level, event, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "event": record.getMessage()}
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
