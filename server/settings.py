"""Server settings: environment variables ``POMSTREAM_*``, overridable from the command line.

One :class:`Settings` object configures every process role (``serve``, ``api``, ``worker``),
so a deployment sets the same variables on all of them. Lists (``POMSTREAM_API_KEYS``) are
comma separated.

What a request may ask for depends on the model (:class:`ModelInfo`): its one frame size
("WxH"), its frame rate and the prompt length its byte encoder reads. :func:`model_info`
reads these from the model file's config without loading the weights, so an API process
that never runs the model validates requests against the same limits as the workers.

Security rule: with no API keys the server is open to whoever can connect, so it must only
be reachable from this machine; :meth:`Settings.check_exposure` refuses a non-loopback host
without keys.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pomstream.model.prompts import PromptRules

log = logging.getLogger("pomstream.settings")


class SettingsError(ValueError):
    """A configuration the server refuses to run with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POMSTREAM_", extra="ignore")

    # where jobs live: None runs an in-process Redis-compatible backend (fakeredis)
    redis_url: str | None = None
    redis_prefix: str = "pomstream"
    claim_idle_ms: int = Field(30_000, ge=100)  # a dead worker's job moves after this idle
    # the model and how it samples
    model: str = "demo"
    device: str = "cpu"
    # weights' dtype: auto = bfloat16 on CUDA, float32 elsewhere (states stay float32)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    cuda_graphs: bool = True  # on CUDA: the frame step replays CUDA graphs per batch size
    threads: int = Field(0, ge=0)  # torch CPU threads, 0 = torch's default
    steps: int | None = Field(None, ge=1, le=1000)  # None: the model card's default
    first_steps: int | None = Field(None, ge=0, le=1000)  # frame 0's; 0: steps
    sampler: str | None = None
    guidance: float | None = Field(None, ge=0, le=50)
    first_guidance: float | None = Field(None, ge=0, le=50)  # frame 0's
    # "digits": one stream per named digit, laid over each other (model/layers.py)
    layers: Literal["joint", "digits"] | None = None
    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # keys that see and act on every key's videos and sessions (operators); they are
    # valid API keys too
    admin_api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # worker
    worker_id: str | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)  # `worker`: serve /metrics here
    max_sessions: int = Field(8, ge=1, le=1024)  # batch slots: jobs stepped together
    # time-slicing: jobs a worker holds at once (0: 4 x max_sessions), rotated through its
    # slots; beyond the slots it takes more only while each still gets min_session_fps
    # (0: no floor), and the API refuses live sessions beyond that (server_busy)
    max_held: int = Field(0, ge=0, le=65_536)
    min_session_fps: float = Field(2.0, ge=0, le=1000)
    snapshot_every: int = Field(16, ge=1, le=10_000)  # frames; also the keyframe interval
    encoder_qp: int = Field(20, ge=0, le=51)
    encode_threads: int = Field(1, ge=1, le=64)
    # live sessions: frames a session may run ahead of what its viewer got, and how long a
    # viewer may stay silent before its session is detached (snapshotted, slot freed)
    session_window: int = Field(8, ge=1, le=1024)
    viewer_timeout_s: float = Field(15.0, gt=0, le=3600)
    # how long a detached session (its viewer gone, or a fork nobody resumed) is kept for a
    # resume; it counts against its key's running work until then
    detached_ttl_s: int = Field(3600, ge=1)
    # control messages one live-session WebSocket may send a second (then an error)
    ws_messages_per_second: int = Field(20, ge=1, le=10_000)
    # storage and expiry
    storage_dir: Path = Path("pomstream-data/videos")
    video_ttl_s: int = Field(24 * 3600, ge=1)
    # request limits (the prompt length and sizes come from the model)
    max_seconds: int = Field(60, ge=1)  # one request (a new video or an extension)
    max_total_seconds: int = Field(600, ge=1)  # a video grown by extensions
    default_seconds: int = Field(4, ge=1)
    max_images: int = Field(4, ge=1, le=64)  # n of one POST /v1/images/generations
    image_timeout_s: float = Field(60.0, gt=0, le=3600)  # its wait for the workers
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # connections: beyond max_connections open connections (or running requests) the
    # server answers 503; an idle keep-alive connection closes after keep_alive_s; a
    # request head not received within header_timeout_s closes the connection; a body
    # not received within body_timeout_s is a 408
    max_connections: int = Field(2048, ge=1)
    keep_alive_s: float = Field(5.0, gt=0, le=3600)
    # a request head (request line and headers) must arrive within this (slowloris)
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    body_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024)  # a video sent back to extend
    # per API key (without keys: for all loopback clients together)
    rate_limit_per_minute: int = Field(600, ge=1)  # HTTP requests and WebSocket opens
    max_active_per_key: int = Field(16, ge=1)  # videos queued or running + live sessions
    # the snapshots a key's finished videos and stopped sessions keep (to be extended or
    # forked) are dropped oldest first beyond this many bytes (0: no cap)
    max_snapshot_bytes_per_key: int = Field(256 * 2**20, ge=0)

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        return [k.strip() for k in value if k and k.strip()]

    @property
    def all_keys(self) -> list[str]:
        """Every key the API accepts (tenants' and admins')."""
        return self.api_keys + self.admin_api_keys

    def accepts(self, key: str | None) -> bool:
        """Is ``key`` one of the API keys (tenants' or admins')? Constant-time compares."""
        return _one_of(key, self.all_keys)

    def is_admin(self, key: str | None) -> bool:
        return _one_of(key, self.admin_api_keys)

    def check_exposure(self) -> None:
        """Refuse to serve without keys on a non-loopback address; warn on loopback."""
        if self.all_keys:
            return
        if not is_loopback(self.host):
            raise SettingsError(
                f"refusing to listen on {self.host!r} without API keys: set POMSTREAM_API_KEYS "
                "(comma separated) or bind to 127.0.0.1")
        log.warning("no API keys configured: the server accepts connections from this "
                    "machine (loopback) only")

    def generation_params(self) -> dict:
        """Sampling settings: the model card's defaults, overridden by these settings."""
        from pomstream.model.files import generation_params

        return generation_params(self.model, self)


def _one_of(key: str | None, keys: list[str]) -> bool:
    return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ModelInfo:
    """What clients can ask of the served model."""

    name: str
    width: int
    height: int
    fps: int
    max_prompt_bytes: int
    prompt_encoder: str = "bytes"
    prompt_order: str = "any"

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def prompt_rules(self) -> PromptRules:
        return PromptRules(self.prompt_encoder, self.max_prompt_bytes, self.prompt_order)


def model_info(spec: str) -> ModelInfo:
    """The served model's format, read from its config (no weights are loaded)."""
    from pomstream.model.config import get_config
    from pomstream.model.files import read_config, resolve

    path = resolve(spec)
    cfg = get_config(str(spec)) if path is None else read_config(path)
    return ModelInfo(cfg.name, cfg.frame_size, cfg.frame_size, cfg.fps, cfg.max_prompt_bytes,
                     cfg.prompt_encoder, cfg.prompt_order)
