"""The videos API end to end: ``pomstream serve`` against a real redis-server, driven by the
official ``openai`` client, httpx and a WebSocket client; PyAV decodes what comes back."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import openai
import pytest
from websockets.exceptions import InvalidStatus

from pomstream.model import StreamGenerator, load_model
from pomstream.server.runtime import Runtime, make_queue
from pomstream.server.settings import Settings, model_info
from pomstream.server.storage import LocalStorage
from tests.support.redis import free_port
from tests.support.servers import (
    ThreadServer,
    api_only_server,
    assert_openai_error,
    decode,
    shared_server,
    wait_for,
    ws_collect,
    ws_url,
)

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
    with api_only_server(tmp_path, api_keys="k1,k2", model=str(tiny_model_file)) as srv:
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
    # accepted with the owner's key in the query or in a subprotocol (no worker: stays
    # queued); another key gets a 404, as for a video that does not exist (tenancy)
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as info:
        ws_collect(ws_url(url, video["id"], "?api_key=k1"))
    assert info.value.response.status_code == 404
    for kwargs in ({"uri": ws_url(url, video["id"], "?api_key=k2")},
                   {"uri": ws_url(url, video["id"]), "subprotocols": ["pomstream", "bearer.k2"]},
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
    from pomstream.server.http.app import create_app

    with ThreadServer(create_app(settings, runtime)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        for response in (http.get("/v1/videos"), http.get("/v1/videos/video_x"),
                         http.post("/v1/videos", json={"prompt": "x"})):
            assert assert_openai_error(response, 503)["code"] == "service_unavailable"
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200
        assert "/v1/videos" in http.get("/openapi.json").json()["paths"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_openai_client_remix_and_extend(server, redis_server, tiny_model_file):
    """Remix: same seed and length, new prompt. Extend: the source's frames (the very same
    fragments) and then new ones, continued from the source's saved state, exactly as one
    uninterrupted session whose prompt changed at the seam."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    source = client.videos.create_and_poll(prompt="digit 1", seconds="1", size=SIZE,
                                           extra_body={"seed": 11}, poll_interval_ms=100)
    remix = client.videos.remix(source.id, prompt="digit 2")
    assert remix.remixed_from_video_id == source.id and remix.seconds == "1"
    # openai 3.57 only sends a file here (a {"id"} reference fails inside the client); the
    # server knows its own files by their hash. httpx sends the reference further down.
    mp4 = client.videos.download_content(source.id).read()
    extended = client.videos.extend(prompt="digit 9", seconds="1", video=("a.mp4", mp4))
    assert extended.seconds == "2" and extended.status == "queued"
    remix = client.videos.poll(remix.id, poll_interval_ms=100)
    extended = client.videos.poll(extended.id, poll_interval_ms=100)
    assert remix.status == extended.status == "completed", (remix.error, extended.error)

    src = decode(client.videos.download_content(source.id).read())
    ext = decode(client.videos.download_content(extended.id).read())
    mix = decode(client.videos.download_content(remix.id).read())
    assert ext.shape == (2 * FPS, 16, 16, 3) and mix.shape == src.shape
    assert (ext[:FPS] == src).all(), "an extension starts with its source's frames"
    assert not (mix == src).all(), "a remix with another prompt draws other frames"

    queue = make_queue(Settings(redis_url=redis_server.url, redis_prefix="apitest"))
    params = queue.get_job(extended.id)["engine"]["params"]
    assert params == queue.get_job(source.id)["engine"]["params"]
    gen = StreamGenerator(load_model(tiny_model_file))
    session = gen.session("digit 1", seed=11, **params)
    for _ in range(FPS):
        session.next_frame()
    session.set_prompt("digit 9")
    expected = np.stack([session.next_frame() for _ in range(FPS)])
    error = np.abs(ext[FPS:].astype(float) - expected).mean()
    assert error < 4, f"extension differs from the uninterrupted session by {error:.1f}/255"
    other = gen.session("digit 9", seed=11, **params)
    fresh = np.stack([other.next_frame() for _ in range(FPS)])
    assert np.abs(fresh.astype(float) - expected).mean() > 2 * error, \
        "the extension must continue the source's state, not start over"


def test_remix_and_extend_errors(http):
    running = create(http, seconds=60)
    for response in (http.post(f"/v1/videos/{running['id']}/remix", json={"prompt": "digit 1"}),
                     http.post("/v1/videos/extensions", json={
                         "prompt": "digit 1", "seconds": "1", "video": {"id": running["id"]}})):
        assert_openai_error(response, 409)
    http.delete(f"/v1/videos/{running['id']}")
    done = wait_status(http, create(http, seconds=1)["id"])
    missing = "video_" + "0" * 24
    assert_openai_error(http.post(f"/v1/videos/{missing}/remix", json={"prompt": "x"}), 404)
    assert_openai_error(http.post("/v1/videos/extensions", json={
        "prompt": "x", "seconds": "1", "video": {"id": missing}}), 404)
    bad = [({"prompt": "x", "seconds": "1"}, "video"),
           ({"prompt": "x", "seconds": "0", "video": {"id": done["id"]}}, "seconds"),
           ({"prompt": "", "seconds": "1", "video": {"id": done["id"]}}, "prompt"),
           ({"prompt": "x", "seconds": "1", "video": {"id": "../etc"}}, "video_id"),
           ({"prompt": "x", "seconds": "1", "video": done["id"]}, "video")]
    for body, param in bad:
        assert_openai_error(http.post("/v1/videos/extensions", json=body), 400, param)
    assert_openai_error(http.post(f"/v1/videos/{done['id']}/remix", json={}), 400, "prompt")
    form = http.post("/v1/videos/extensions",
                     data={"prompt": "digit 4", "seconds": "1", "video[id]": done["id"]})
    assert form.status_code == 200 and form.json()["seconds"] == "2", form.text
    assert form.json()["extended_from_video_id"] == done["id"]
    stranger = http.post("/v1/videos/extensions", data={"prompt": "x", "seconds": "1"},
                         files={"video": ("v.mp4", b"\x00\x00\x00\x18ftypisom" + b"0" * 64)})
    assert_openai_error(stranger, 400, "video")
    two = http.post("/v1/videos/extensions", data={"prompt": "x", "seconds": "1"},
                    files=[("video", ("a.mp4", b"a")), ("other", ("b.mp4", b"b"))])
    assert_openai_error(two, 400)


@pytest.fixture
def limited_server(redis_server, tiny_model_file, tmp_path):
    """API only (no worker: videos stay queued) on the real Redis, with small limits."""
    with api_only_server(tmp_path, api_keys="k1,k2", model=str(tiny_model_file),
                         redis_url=redis_server.url, redis_prefix=f"limits{tmp_path.name}",
                         rate_limit_per_minute=40, max_active_per_key=2,
                         clock=lambda: 1_800_000_030.0) as srv:  # mid-window, frozen
        yield srv


def test_per_key_limits_on_running_work_and_request_rate(limited_server):
    from websockets.sync.client import connect

    url = limited_server.url
    k1, k2 = ({"Authorization": f"Bearer {k}"} for k in ("k1", "k2"))

    def post(headers):
        return httpx.post(f"{url}/v1/videos", json={"prompt": "digit 1"}, headers=headers)

    first, second = (post(k1).json() for _ in range(2))
    error = assert_openai_error(post(k1), 429)
    assert (error["code"], error["type"]) == ("too_many_active", "rate_limit_error")
    assert post(k2).status_code == 200, "each key has its own limit"
    with connect(url.replace("http", "ws") + "/v1/sessions?api_key=k1", open_timeout=10) as ws:
        ws.send('{"type": "start", "prompt": "digit 1"}')
        assert '"too_many_active"' in ws.recv(timeout=10)
    httpx.delete(f"{url}/v1/videos/{first['id']}", headers=k1)
    assert post(k1).status_code == 200, "a finished (here: deleted) video frees its slot"
    assert second["status"] == "queued"

    # the store's clock is frozen 30 s into a rate window: the burst and the request checked
    # below fall in the same window, whatever the wall clock says
    codes = [httpx.get(f"{url}/v1/videos", headers=k2).status_code for _ in range(45)]
    assert codes.count(200) <= 40 and 429 in codes
    limited = httpx.get(f"{url}/v1/videos", headers=k2)
    error = assert_openai_error(limited, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    with pytest.raises(InvalidStatus) as info:
        ws_collect(ws_url(url, second["id"], "?api_key=k2"))
    assert info.value.response.status_code == 429
    assert httpx.get(f"{url}/v1/videos", headers=k1).status_code == 200, "k1 is not limited"
