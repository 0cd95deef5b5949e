"""What a model understands of a prompt: the rules, without torch.

Two prompt encoders exist (``ModelConfig.prompt_encoder``):

``"bytes"``
    any UTF-8 text up to ``max_prompt_bytes``, read byte by byte (general prompts);
``"digits"``
    the Moving-digits grammar only: ``"digit 4"``, ``"digits 3 and 7"``,
    ``"digits 1, 4 and 9"`` (one to three digits; "digit"/"digits" may be left out, case
    and extra spaces do not matter). The model reads the set of digits and their count,
    which a byte encoder of this size could not learn reliably.

The empty prompt is always accepted: it is the unconditional input of classifier-free
guidance. Everything here is plain Python so that the API process can refuse a prompt
with a clear 400 before any model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_DIGITS = 3  # the most digits a Moving-digits clip holds
# what the order of a prompt's digits means (ModelConfig.prompt_order, MovingDigits(order=))
ORDERS = ("any", "left_to_right")
# how a stream draws a prompt's digits (GenerationParams.layers): "joint", the network
# draws the whole prompt in one stream; "digits", one single-digit stream per named digit,
# the frames laid over each other (model/layers.py)
LAYERS = ("joint", "digits")
EXAMPLE = "digits 3 and 7"
_DIGIT_PROMPT = re.compile(
    r"(?:digits?\s+)?([0-9])(?:(?:\s*,\s*|\s+and\s+|\s*,\s*and\s+|\s+)([0-9]))?"
    r"(?:(?:\s*,\s*|\s+and\s+|\s*,\s*and\s+|\s+)([0-9]))?", re.IGNORECASE)


class PromptError(ValueError):
    """A prompt this model cannot read; the message says what it reads instead.
    ``code``: ``prompt_too_long`` or ``prompt_not_understood`` (the API's error codes)."""

    def __init__(self, message: str, code: str = "prompt_not_understood"):
        super().__init__(message)
        self.code = code


def parse_digit_prompt(text: str) -> list[int]:
    """"digits 3 and 7" -> [3, 7]; "" -> []; anything outside the grammar: PromptError."""
    if not isinstance(text, str):
        raise PromptError("prompt must be a string")
    stripped = text.strip()
    if not stripped:
        return []
    m = _DIGIT_PROMPT.fullmatch(stripped)
    if m is None:
        raise PromptError(
            f"this model draws one to {MAX_DIGITS} digits and reads prompts such as "
            f"\"digit 4\", \"{EXAMPLE}\" or \"digits 1, 4 and 9\"; it cannot read "
            f"{_shorten(stripped)!r}")
    return [int(d) for d in m.groups() if d is not None]


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class PromptRules:
    """What a model's prompt encoder accepts; built from a model config's fields."""

    encoder: str = "bytes"
    max_bytes: int = 64
    order: str = "any"  # ModelConfig.prompt_order: what the order of the digits means

    def check(self, prompt: str) -> str:
        """The prompt unchanged, or PromptError saying why this model cannot read it."""
        if not isinstance(prompt, str):
            raise PromptError("prompt must be a string")
        size = len(prompt.encode("utf-8", errors="surrogatepass"))
        if size > self.max_bytes:
            raise PromptError(f"prompt is {size} bytes; this model reads at most "
                              f"{self.max_bytes}", "prompt_too_long")
        if self.encoder == "digits":
            parse_digit_prompt(prompt)
        return prompt

    def describe(self) -> dict:
        """For people and clients (``GET /v1/models``): what prompts work, with examples."""
        if self.encoder == "digits":
            out = {"kind": "digits", "max_digits": MAX_DIGITS,
                   "grammar": "digit D | digits D and D | digits D, D and D (D = 0-9)",
                   "examples": ["digit 4", EXAMPLE, "digits 1, 4 and 9"]}
            if self.order == "left_to_right":
                out["order"] = "the first frame shows the digits left to right as named"
            return out
        return {"kind": "text", "max_bytes": self.max_bytes,
                "examples": ["digit 4", EXAMPLE]}
