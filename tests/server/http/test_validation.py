"""The values clients send, checked once for HTTP and WebSocket (server/http/validation.py)
as unit tests; and a model that reads only its digit grammar refusing other prompts with
a clear 4xx on both, and saying what it reads at GET /v1/models."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from websockets.sync.client import connect

from pomstream.model import save_model
from pomstream.model.config import get_config
from pomstream.model.dit import VideoDiT
from pomstream.model.prompts import PromptRules
from pomstream.server.http.errors import invalid
from pomstream.server.http.validation import (
    Invalid,
    check_prompt,
    check_seed,
    check_size,
    check_video_id,
    is_session_id,
    parse_seconds,
)
from tests.support.servers import api_only_server, assert_openai_error

BYTES = PromptRules("bytes", 32)
DIGITS = PromptRules("digits", 64)


@pytest.mark.parametrize(("prompt", "rules", "code"), [
    (None, BYTES, "invalid_prompt"), (5, BYTES, "invalid_prompt"), ("", BYTES, "invalid_prompt"),
    ("  ", BYTES, "invalid_prompt"), ("x" * 33, BYTES, "prompt_too_long"),
    ("é" * 17, BYTES, "prompt_too_long"), ("a cat", DIGITS, "prompt_not_understood"),
    ("digits 1, 2, 3 and 4", DIGITS, "prompt_not_understood")])
def test_bad_prompts(prompt, rules, code):
    with pytest.raises(Invalid) as info:
        check_prompt(prompt, rules)
    assert info.value.code == code and info.value.param == "prompt" and info.value.message


def test_good_prompts_pass_unchanged():
    assert check_prompt("a cat", BYTES) == "a cat"
    assert check_prompt("digits 3 and 7", DIGITS) == "digits 3 and 7"


@pytest.mark.parametrize("seed", [-1, 2**63, True, "7", 1.5])
def test_bad_seeds(seed):
    with pytest.raises(Invalid, match="seed must be an integer"):
        check_seed(seed)


def test_seeds():
    assert check_seed(0) == 0 and check_seed(2**63 - 1) == 2**63 - 1
    assert 0 <= check_seed(None) < 2**31


@pytest.mark.parametrize(("value", "ok"), [
    (None, 4), ("3", 3), (" 12 ", 12), ("4\n", 4), (12, 12), ("abc", None), ("2.5", None),
    (0, None), ("100000", None), (-1, None), ("", None)])
def test_seconds(value, ok):
    if ok is None:
        with pytest.raises(Invalid) as info:
            parse_seconds(value, 4, 20)
        assert info.value.param == "seconds"
    else:
        assert parse_seconds(value, 4, 20) == ok


def test_size_and_ids():
    assert check_size(None, "16x16") == "16x16" and check_size("16x16", "16x16") == "16x16"
    with pytest.raises(Invalid, match="not supported"):
        check_size("64x64", "16x16")
    assert check_video_id("video_abc") == "video_abc"
    with pytest.raises(Invalid):
        check_video_id("../etc")
    assert is_session_id("sess_1") and not is_session_id("video_1")
    assert not is_session_id(3) and not is_session_id("sess:1")


def test_http_codes_of_invalid_values():
    assert invalid(Invalid("prompt_too_long", "m", "prompt")).code == "prompt_too_long"
    assert invalid(Invalid("invalid_seed", "m", "seed")).code == "invalid_value"
    assert invalid(Invalid("invalid_seed", "m", "seed")).status == 400


@pytest.fixture(scope="module")
def digits_server(tmp_path_factory):
    """The API (no worker) serving a tiny model that reads only the digit grammar."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("digits") / "digits.safetensors"
    save_model(VideoDiT(get_config("pom-dit-tiny", prompt_encoder="digits")), path)
    with api_only_server(tmp_path_factory.mktemp("store"), model=str(path)) as srv:
        yield srv


def test_a_digit_model_refuses_other_prompts_on_http(digits_server):
    url = digits_server.url
    error = assert_openai_error(httpx.post(f"{url}/v1/videos", json={"prompt": "a cat"}),
                                400, "prompt")
    assert error["code"] == "prompt_not_understood" and "digits 3 and 7" in error["message"]
    ok = httpx.post(f"{url}/v1/videos", json={"prompt": "digits 3 and 7"})
    assert ok.status_code == 200, ok.text
    models = httpx.get(f"{url}/v1/models").json()
    (model,) = models["data"]
    assert model["prompts"]["kind"] == "digits" and "digits 3 and 7" in model["prompts"][
        "examples"]


def test_a_digit_model_refuses_other_prompts_on_the_websocket(digits_server):
    ws_url = digits_server.url.replace("http", "ws") + "/v1/sessions"
    with connect(ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "prompt": "a cat"}))
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "error" and reply["code"] == "prompt_not_understood"
        assert "digits 3 and 7" in reply["message"]
        ws.send(json.dumps({"type": "start", "prompt": "digit 4"}))  # the connection stays
        assert json.loads(ws.recv(timeout=10))["type"] == "session"


@pytest.mark.parametrize("prompt", ["a\ud800", "\u200b", "\u200b \u200b", "\n\t"])
def test_prompts_need_valid_visible_text(prompt):
    with pytest.raises(Invalid) as info:
        check_prompt(prompt, BYTES)
    assert info.value.code == "invalid_prompt"


@pytest.mark.parametrize("value", [True, False, "٣", "３"])
def test_seconds_are_ascii_numbers_not_booleans(value):
    with pytest.raises(Invalid):
        parse_seconds(value, 4, 20)


BAD_BODIES = [  # (raw JSON body, param or None) each once a 500 (issue 12)
    ('{"prompt": "a\\ud800"}', "prompt"),
    ('{"prompt": "\\u200b"}', "prompt"),
    ("[" * 3000 + "]" * 3000, None),
    ('{"prompt": "x", "seed": ' + "1" * 4301 + "}", None),
    ('{"prompt": "x", "seconds": ' + "1" * 4301 + "}", None),
    ('{"prompt": "x", "seconds": true}', "seconds"),
    ('{"prompt": "x", "seed": true}', "seed"),
    ('{"prompt": "digit 1", "seconds": "\\u0663"}', "seconds"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_bad_bodies_are_400s_never_500s(digits_server, body, param):
    """On the API: a 400 naming the field; on remix (whose source does not exist) a 4xx
    in OpenAI's shape all the same."""
    headers = {"content-type": "application/json"}
    response = httpx.post(digits_server.url + "/v1/videos", content=body.encode(),
                          headers=headers)
    assert_openai_error(response, 400, param)
    remix = httpx.post(digits_server.url + "/v1/videos/video_x/remix", content=body.encode(),
                       headers=headers)
    assert remix.status_code in (400, 404) and remix.json()["error"]["message"]


@pytest.mark.parametrize("message", [
    '{"type": "start", "prompt": "a\\ud800"}', "[" * 3000 + "]" * 3000,
    '{"type": "start", "prompt": "digit 1", "seed": ' + "1" * 4301 + "}"])
def test_bad_websocket_messages_get_an_error_not_a_crash(digits_server, message):
    ws_url = digits_server.url.replace("http", "ws") + "/v1/sessions"
    with connect(ws_url, open_timeout=10) as ws:
        ws.send(message)
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "error" and reply["code"] in ("invalid_prompt",
                                                              "protocol_error")


def multipart(fields: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body written byte by byte (clients would refuse to send bad UTF-8)."""
    boundary = "pomstreamtestboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
             + value + b"\r\n" for name, value in fields.items()]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_form_fields_must_be_utf8(digits_server):
    """Invalid UTF-8 in a form is a 400 naming the field, not mojibake (issue 12)."""
    url = digits_server.url + "/v1/videos"
    body, headers = multipart({"prompt": b"digit 1", "seconds": b"4\xff"})
    error = assert_openai_error(httpx.post(url, content=body, headers=headers), 400, "seconds")
    assert error["code"] == "invalid_form" and "UTF-8" in error["message"]
    body, headers = multipart({"prompt": b"digit \xc3\xa9"})  # valid UTF-8 (an e-acute)
    reply = httpx.post(url, content=body, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "prompt_not_understood"
    body, headers = multipart({"prompt": b"digit 2"})
    assert httpx.post(url, content=body, headers=headers).status_code == 200
    form = {"content-type": "application/x-www-form-urlencoded"}
    error = assert_openai_error(httpx.post(url, content=b"prompt=digit%20%FF", headers=form),
                                400)
    assert error["code"] == "invalid_form"
    assert httpx.post(url, content=b"prompt=digit%203", headers=form).status_code == 200
    raw = httpx.post(url, content="prompt=digit é".encode(), headers=form)  # not escaped
    assert_openai_error(raw, 400)
