"""OpenAI's images API (issue 13) end to end: ``pomstream serve`` with API keys against a
real redis-server, driven by the official ``openai`` client; PyAV decodes the pictures."""

from __future__ import annotations

import base64
import io

import av
import httpx
import numpy as np
import openai
import pytest

from pomstream.server.engine.jobs import IMAGE_FORMATS
from pomstream.server.http.images import ImageRequest
from tests.support.redis import free_port
from tests.support.servers import ServerProcess, assert_openai_error

KEY, OTHER = "images-key", "images-other-key"
SIZE = "16x16"


@pytest.fixture(scope="module")
def server(redis_server, tiny_model_file, tmp_path_factory):
    proc = ServerProcess("serve", tmp_path_factory.mktemp("images"), tiny_model_file,
                         redis_url=redis_server.url, port=free_port(),
                         extra=["--prefix", "images"],
                         env={"POMSTREAM_API_KEYS": f"{KEY},{OTHER}",
                              "POMSTREAM_MAX_IMAGES": "3"})
    proc.start().wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def picture(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def test_the_official_client_generates_images(client):
    reply = client.images.generate(prompt="digit 3", n=2, size=SIZE, model="pom-dit-tiny",
                                   response_format="b64_json", extra_body={"seed": 11})
    assert len(reply.data) == 2 and reply.created > 0
    raw = [base64.b64decode(item.b64_json) for item in reply.data]
    assert all(r.startswith(b"\x89PNG") for r in raw)
    first, second = (picture(r) for r in raw)
    assert first.shape == second.shape == (16, 16, 3)
    assert not np.array_equal(first, second)  # seeds 11 and 12
    again = client.images.generate(prompt="digit 3", size=SIZE, extra_body={"seed": 11})
    assert np.array_equal(picture(base64.b64decode(again.data[0].b64_json)), first)


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_output_formats(client, fmt, magic):
    reply = client.images.generate(prompt="digit 5", size="auto", output_format=fmt)
    data = base64.b64decode(reply.data[0].b64_json)
    assert data.startswith(magic) and picture(data).shape == (16, 16, 3)


def test_urls_need_the_owners_key(client, server):
    reply = client.images.generate(prompt="digit 7", response_format="url",
                                   output_format="webp")
    url = reply.data[0].url
    assert url.startswith(server.url + "/v1/images/image_") and url.endswith("/content")
    own = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"})
    assert own.status_code == 200 and own.headers["content-type"] == "image/webp"
    assert picture(own.content).shape == (16, 16, 3)
    other = httpx.get(url, headers={"Authorization": f"Bearer {OTHER}"})
    assert_openai_error(other, 404, "image_id")
    videos = httpx.get(f"{server.url}/v1/videos", headers={"Authorization": f"Bearer {KEY}"})
    assert all(v["id"].startswith("video_") for v in videos.json()["data"])  # not a video


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "digit 1", "n": 0}, "n"), ({"prompt": "digit 1", "n": 4}, "n"),
    ({"prompt": "digit 1", "n": True}, "n"), ({"prompt": "digit 1", "size": "1024x1024"}, "size"),
    ({"prompt": "digit 1", "response_format": "gif"}, "response_format"),
    ({"prompt": "digit 1", "output_format": "bmp"}, "output_format"),
    ({"prompt": ""}, "prompt"), ({"n": 1}, "prompt"),
    ({"prompt": "x", "model": "dall-e-3"}, "model"),
    ({"prompt": "digit 1", "quality": "hd"}, "quality"),
])
def test_bad_requests_are_openai_shaped_400s(server, body, param):
    reply = httpx.post(f"{server.url}/v1/images/generations", json=body,
                       headers={"Authorization": f"Bearer {KEY}"})
    assert_openai_error(reply, 400, param)


def test_the_client_raises_on_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="digit 1", size="1024x1024")
    assert info.value.status_code == 400 and "16x16" in str(info.value)


def test_formats_are_the_workers():
    assert ImageRequest.model_fields["output_format"].annotation.__args__ == IMAGE_FORMATS
