"""The videos API end to end: ``pomstream serve`` against a real redis-server, driven by the
official ``openai`` client, httpx and a WebSocket client; PyAV decodes what comes back."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from websockets.exceptions import InvalidStatus

from server.app import Runtime, make_queue
from server.settings import Settings, model_info
from server.storage import LocalStorage
from tests.redis_helpers import free_port
from tests.test_server_support import (
    ThreadServer,
    assert_openai_error,
    decode,
    shared_server,
    wait_for,
    ws_collect,
    ws_url,
)

pytest_plugins = ["tests.redis_fixture", "tests.test_server_support"]

FPS = 8  # the tiny model's frame rate: a second is 8 frames
SIZE = "16x16"


@pytest.fixture(scope="module")
def server(redis_server, tiny_model_file, tmp_path_factory):
    yield from shared_server(redis_server, tiny_model_file, tmp_path_factory, "apitest",
                             "--max-sessions", "4")


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def create(http: httpx.Client, **body) -> dict:
    response = http.post("/v1/videos", json={"prompt": "digits 3 and 7", **body})
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(http: httpx.Client, video_id: str, statuses=("completed", "failed"),
                timeout: float = 60) -> dict:
    return wait_for(lambda: (v := http.get(f"/v1/videos/{video_id}").json())["status"]
                    in statuses and v, timeout, what=f"{video_id} to be {statuses}")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_openai_client_create_poll_download_list_delete(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    video = client.videos.create_and_poll(prompt="digits 3 and 7", seconds="2", size=SIZE,
                                          poll_interval_ms=100)
    assert (video.status, video.progress, video.seconds, video.size) == (
        "completed", 100, "2", SIZE)
    assert video.object == "video" and video.model == "pom-dit-tiny" and video.error is None
    assert video.created_at <= video.completed_at < video.expires_at

    frames = decode(client.videos.download_content(video.id).read())
    assert frames.shape == (2 * FPS, 16, 16, 3)
    for variant in ("thumbnail", "spritesheet"):
        image = client.videos.download_content(video.id, variant=variant).read()
        assert image.startswith(b"\x89PNG\r\n\x1a\n")

    assert client.videos.retrieve(video.id).status == "completed"
    assert video.id in [v.id for v in client.videos.list(limit=5)]
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_json_and_form_bodies_and_pagination(http):
    a = create(http, seconds=1, seed=7)  # an int is accepted as well as OpenAI's string
    assert (a["seconds"], a["size"], a["status"]) == ("1", SIZE, "queued")
    response = http.post("/v1/videos", data={"prompt": "digit 5", "seconds": "1"})
    assert response.status_code == 200, response.text
    b = response.json()
    for video in (a, b):
        assert wait_status(http, video["id"])["status"] == "completed"

    page = http.get("/v1/videos", params={"limit": 1}).json()
    assert page["object"] == "list" and page["has_more"] and page["data"][0]["id"] == b["id"]
    rest = http.get("/v1/videos", params={"limit": 1, "after": page["last_id"]}).json()
    assert rest["data"][0]["id"] == a["id"]
    asc = http.get("/v1/videos", params={"order": "asc", "limit": 100}).json()["data"]
    ids = [v["id"] for v in asc]
    assert ids.index(a["id"]) < ids.index(b["id"])


def test_websocket_stream_live_and_late_joiner(server, http):
    video = create(http, seconds=4, seed=3)
    live: dict = {}
    viewer = threading.Thread(target=lambda: live.update(
        zip(("texts", "blobs"), ws_collect(ws_url(server.url, video["id"])), strict=True)))
    viewer.start()
    done = wait_status(http, video["id"])
    viewer.join(60)
    assert done["status"] == "completed" and live, "the live viewer got no stream"

    texts, blobs = ws_collect(ws_url(server.url, video["id"]))  # joins after the end
    assert blobs == live["blobs"], "a late joiner must get the same bytes"
    kinds = [t["type"] for t in texts]
    assert kinds[0] == "status" and "init" in kinds and kinds[-1] == "end"
    init = next(t for t in texts if t["type"] == "init")
    assert init["mime"].startswith('video/mp4; codecs="avc1.')
    assert texts[-1] == {"type": "end", "status": "completed", "error": None, "frames": 4 * FPS}
    assert [t["progress"] for t in texts if t["type"] == "progress"][-1] == 99

    streamed = decode(b"".join(blobs))  # init segment + one fragment per frame
    assert len(blobs) == 1 + 4 * FPS and streamed.shape == (4 * FPS, 16, 16, 3)
    downloaded = decode(http.get(f"/v1/videos/{video['id']}/content").content)
    assert (streamed == downloaded).all()


def test_cancel_and_delete_running_videos(http):
    cancel = create(http, seconds=60)
    delete = create(http, seconds=60)
    for video in (cancel, delete):
        wait_for(lambda v=video: http.get(f"/v1/videos/{v['id']}").json()["progress"] > 0,
                 what="generation to start")
    assert http.post(f"/v1/videos/{cancel['id']}/cancel").status_code == 200
    assert http.delete(f"/v1/videos/{delete['id']}").json()["deleted"] is True

    failed = wait_status(http, cancel["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "cancelled"
    assert failed["progress"] < 100
    assert_openai_error(http.get(f"/v1/videos/{cancel['id']}/content"), 409, "video_id")
    assert_openai_error(http.post(f"/v1/videos/{cancel['id']}/cancel"), 409, "video_id")
    assert_openai_error(http.get(f"/v1/videos/{delete['id']}"), 404, "video_id")
    # the worker is still healthy and takes the next job
    assert wait_status(http, create(http, seconds=1)["id"])["status"] == "completed"


BAD_CREATES = [
    ({"prompt": "x", "size": "64x64"}, "size"),
    ({"prompt": "x" * 33}, "prompt"),  # the tiny model reads 32 bytes
    ({"prompt": "é" * 17}, "prompt"),  # 34 bytes in UTF-8
    ({"prompt": "  "}, "prompt"),
    ({"prompt": "x", "seconds": "abc"}, "seconds"),
    ({"prompt": "x", "seconds": "2.5"}, "seconds"),
    ({"prompt": "x", "seconds": 2.5}, "seconds"),
    ({"prompt": "x", "seconds": 0}, "seconds"),
    ({"prompt": "x", "seconds": "100000"}, "seconds"),
    ({"prompt": "x", "seconds": None, "model": "sora-2"}, "model"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": 5}, "prompt"),
    ({"seconds": "4"}, "prompt"),
    ({"prompt": "x", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CREATES)
def test_bad_create_bodies_get_400(http, body, param):
    assert_openai_error(http.post("/v1/videos", json=body), 400, param)


def test_bad_requests_get_4xx(http):
    post = http.post
    assert_openai_error(post("/v1/videos", content=b"{nope",
                             headers={"content-type": "application/json"}), 400)
    assert_openai_error(post("/v1/videos", json=["prompt"]), 400)
    assert_openai_error(post("/v1/videos", content=b"prompt=x",
                             headers={"content-type": "text/plain"}), 415)
    assert_openai_error(post("/v1/videos", json={"prompt": "x" * 100_000}), 413)
    assert_openai_error(post("/v1/videos", data={"prompt": "x"},
                             files={"input_reference": ("a.png", b"png", "image/png")}), 400)
    assert_openai_error(http.get("/v1/videos/bad!id"), 400, "video_id")
    assert_openai_error(http.get("/v1/videos/" + "a" * 65), 400, "video_id")
    assert_openai_error(http.get("/v1/videos/video_missing"), 404, "video_id")
    assert_openai_error(http.delete("/v1/videos/video_missing"), 404, "video_id")
    assert_openai_error(http.get("/v1/videos/video_missing/content"), 404, "video_id")
    assert_openai_error(http.get("/v1/videos/x/content", params={"variant": "gif"}), 400,
                        "variant")
    assert_openai_error(http.get("/v1/videos", params={"limit": 0}), 400, "limit")
    assert_openai_error(http.get("/v1/videos", params={"limit": "many"}), 400, "limit")
    assert_openai_error(http.get("/v1/videos", params={"order": "sideways"}), 400, "order")
    assert_openai_error(http.get("/v1/videos", params={"after": "video_missing"}), 404,
                        "after")
    assert_openai_error(http.get("/v1/nothing"), 404)
    assert_openai_error(http.put("/v1/videos"), 405)


def test_websocket_bad_ids_are_refused(server):
    for video_id, status in (("video_missing", 404), ("bad!id", 400)):
        with pytest.raises(InvalidStatus) as info:
            ws_collect(ws_url(server.url, video_id))
        assert info.value.response.status_code == status


@pytest.fixture
def keyed_server(tiny_model_file, tmp_path):
    """An API-only server with API keys (in a thread; its queue is in-process)."""
    settings = Settings(api_keys="k1,k2", model=str(tiny_model_file), storage_dir=tmp_path)
    runtime = Runtime(settings, make_queue(settings), LocalStorage(tmp_path),
                      model_info(settings.model))
    from server.api import create_app

    with ThreadServer(create_app(settings, runtime)) as srv:
        yield srv


def test_api_keys_guard_http_and_websockets(keyed_server):
    url = keyed_server.url
    assert httpx.get(f"{url}/healthz").status_code == 200
    error = assert_openai_error(httpx.get(f"{url}/v1/videos"), 401)
    assert error["code"] == "missing_api_key"
    wrong = {"Authorization": "Bearer nope"}
    assert assert_openai_error(httpx.get(f"{url}/v1/videos", headers=wrong), 401)["code"] == \
        "invalid_api_key"
    assert_openai_error(httpx.post(f"{url}/v1/videos", json={"prompt": "x"}), 401)
    good = {"Authorization": "Bearer k2"}
    video = httpx.post(f"{url}/v1/videos", json={"prompt": "x"}, headers=good).json()
    assert video["status"] == "queued"

    with pytest.raises(InvalidStatus) as info:
        ws_collect(ws_url(url, video["id"]))
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        ws_collect(ws_url(url, video["id"], "?api_key=nope"))
    # accepted with the key in the query or in a subprotocol (no worker: stays queued)
    from websockets.sync.client import connect

    for kwargs in ({"uri": ws_url(url, video["id"], "?api_key=k1")},
                   {"uri": ws_url(url, video["id"]), "subprotocols": ["pomstream", "bearer.k1"]},
                   {"uri": ws_url(url, video["id"]), "additional_headers": good}):
        with connect(open_timeout=10, **kwargs) as ws:
            assert '"status":"queued"' in ws.recv(timeout=10).replace(" ", "")
            if "subprotocols" in kwargs:
                assert ws.subprotocol == "pomstream"


def test_redis_down_gets_503_not_500(tiny_model_file, tmp_path):
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                        model=str(tiny_model_file), storage_dir=tmp_path)
    runtime = Runtime(settings, make_queue(settings), LocalStorage(tmp_path),
                      model_info(settings.model))
    from server.api import create_app

    with ThreadServer(create_app(settings, runtime)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        for response in (http.get("/v1/videos"), http.get("/v1/videos/video_x"),
                         http.post("/v1/videos", json={"prompt": "x"})):
            assert assert_openai_error(response, 503)["code"] == "service_unavailable"
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200
        assert "/v1/videos" in http.get("/openapi.json").json()["paths"]
