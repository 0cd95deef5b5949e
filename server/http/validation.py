"""The values a client sends, checked once for HTTP and WebSocket alike.

Each check returns the value to use or raises :class:`Invalid` with a code (the
WebSocket's ``error`` codes; :func:`~pomstream.server.http.errors.invalid` maps them to
the HTTP API's) and the parameter it concerns. Torch-free: the prompt rules come from the
model's config (:class:`~pomstream.model.prompts.PromptRules`).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from pomstream.model.prompts import PromptError, PromptRules
from pomstream.server.store import check_id

SECONDS_RE = re.compile(r"^[ \t\n\r\f\v]*[0-9]{1,6}[ \t\n\r\f\v]*$")  # ASCII digits
MAX_SEED = 2**63


class Invalid(ValueError):
    """A value the server refuses: ``code`` (e.g. ``invalid_seed``), ``message``, ``param``."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def no_bool(value: Any) -> Any:
    """For number fields: JSON true/false is not a number (pydantic would take it as 1/0)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def check_prompt(prompt: Any, rules: PromptRules) -> str:
    """A prompt this model can read: text with at least one visible character, valid
    Unicode (no lone surrogates), within the model's length (and grammar, for models that
    understand only one)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("invalid_prompt", "prompt must be a non-empty string", "prompt")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("invalid_prompt", "prompt must be valid Unicode text (it holds a lone "
                      "surrogate)", "prompt") from None
    if not any(ch.isprintable() and not ch.isspace() for ch in prompt):
        raise Invalid("invalid_prompt", "prompt must contain a visible character", "prompt")
    try:
        return rules.check(prompt)
    except PromptError as exc:
        raise Invalid(exc.code, str(exc), "prompt") from None


def check_seed(seed: Any) -> int:
    """The seed to use: the one given (an integer in 0..2**63-1) or a random one."""
    if seed is None:
        return secrets.randbelow(2**31)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise Invalid("invalid_seed", "seed must be an integer in 0..2**63-1", "seed")
    return seed


def check_size(size: Any, supported: str) -> str:
    size = supported if size is None else size
    if size != supported:
        raise Invalid("invalid_size", f"size {size!r} is not supported; this model makes "
                      f"{supported}", "size")
    return size


def parse_seconds(value: int | str | None, default: int, maximum: int) -> int:
    """A whole number of seconds in 1..maximum ("4" or 4); ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise Invalid("invalid_seconds", "seconds must be a whole number, not true or false",
                      "seconds")
    if isinstance(value, str):
        if not SECONDS_RE.match(value):
            raise Invalid("invalid_seconds", f"seconds must be a whole number, got {value!r}",
                          "seconds")
        value = int(value)
    if not 1 <= value <= maximum:
        raise Invalid("invalid_seconds", f"seconds must be in 1..{maximum}, got {value}",
                      "seconds")
    return value


def check_video_id(video_id: str, param: str = "video_id") -> str:
    try:
        return check_id(video_id, "video id")
    except ValueError:
        raise Invalid("invalid_value", f"invalid video id {video_id[:80]!r}", param) from None


def is_session_id(sid: Any) -> bool:
    if not isinstance(sid, str):
        return False
    try:
        check_id(sid)
    except ValueError:
        return False
    return sid.startswith("sess_")
