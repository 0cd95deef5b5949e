"""Keys are tenants: a key sees and acts on its own videos and sessions only (404 for
anyone else's: no existence leak), listings are per owner and never cut before filtering,
admin keys see everything. The API in this process on fakeredis (no worker: jobs stay
queued); the store code is the one that runs against Redis."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pomstream.server.http.deps import Tenant
from tests.support.servers import api_only_server, assert_openai_error, ws_collect, ws_url

K1, K2, ADMIN = ({"Authorization": f"Bearer {k}"} for k in ("k1", "k2", "adm"))


@pytest.fixture
def api(tiny_model_file, tmp_path):
    with api_only_server(tmp_path, api_keys="k1,k2", admin_api_keys="adm",
                         model=str(tiny_model_file), max_active_per_key=100) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            client.ws = srv.url.replace("http", "ws")
            yield client


def create(api, headers, prompt="digit 3") -> dict:
    response = api.post("/v1/videos", json={"prompt": prompt}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def start_session(api, key: str) -> str:
    with connect(f"{api.ws}/v1/sessions?api_key={key}", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "prompt": "digit 1"}))
        return json.loads(ws.recv(timeout=10))["session_id"]


def test_another_keys_video_is_not_found_anywhere(api):
    video = create(api, K1)
    vid = video["id"]
    for method, path, body in [
            ("GET", f"/v1/videos/{vid}", None), ("DELETE", f"/v1/videos/{vid}", None),
            ("POST", f"/v1/videos/{vid}/cancel", None),
            ("GET", f"/v1/videos/{vid}/content", None),
            ("POST", f"/v1/videos/{vid}/remix", {"prompt": "digit 4"}),
            ("POST", "/v1/videos/extensions",
             {"prompt": "digit 4", "seconds": "1", "video": {"id": vid}})]:
        response = api.request(method, path, json=body, headers=K2)
        assert_openai_error(response, 404)
        assert vid in response.json()["error"]["message"]  # the same words as a made-up id
    with pytest.raises(InvalidStatus) as info:
        ws_collect(ws_url(str(api.base_url), vid, "?api_key=k2"))
    assert info.value.response.status_code == 404
    # the owner and an admin still see it, untouched
    assert api.get(f"/v1/videos/{vid}", headers=K1).json()["status"] == "queued"
    assert api.get(f"/v1/videos/{vid}", headers=ADMIN).status_code == 200


def test_listings_are_per_owner_and_pages_are_full(api):
    for _ in range(20):  # sessions never appear in, nor empty out, a video listing
        start_session(api, "k1")
    mine = [create(api, K1, f"digit {i}")["id"] for i in range(3)]
    theirs = create(api, K2)["id"]
    page = api.get("/v1/videos", params={"limit": 2}, headers=K1).json()
    assert [v["id"] for v in page["data"]] == mine[::-1][:2] and page["has_more"]
    assert (page["first_id"], page["last_id"]) == (mine[2], mine[1])
    rest = api.get("/v1/videos", params={"after": page["last_id"]}, headers=K1).json()
    assert [v["id"] for v in rest["data"]] == [mine[0]] and not rest["has_more"]
    other = api.get("/v1/videos", headers=K2).json()
    assert [v["id"] for v in other["data"]] == [theirs]
    assert other["first_id"] == other["last_id"] == theirs
    # another key's id is not a cursor either
    assert_openai_error(api.get("/v1/videos", params={"after": mine[0]}, headers=K2), 404)
    everyone = api.get("/v1/videos", params={"limit": 100}, headers=ADMIN).json()
    assert {v["id"] for v in everyone["data"]} == {*mine, theirs}


def test_another_keys_session_cannot_be_resumed(api):
    sid = start_session(api, "k1")
    with connect(f"{api.ws}/v1/sessions?api_key=k2", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "resume", "session_id": sid}))
        reply = json.loads(ws.recv(timeout=10))
        assert (reply["type"], reply["code"]) == ("error", "not_found")
    with connect(f"{api.ws}/v1/sessions?api_key=k1", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "resume", "session_id": sid}))
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "session" and reply["session_id"] == sid


def test_deleting_a_video_removes_it_from_its_listing(api):
    vid = create(api, K1)["id"]
    assert api.delete(f"/v1/videos/{vid}", headers=K1).status_code == 200
    assert api.get("/v1/videos", headers=K1).json()["data"] == []
    assert api.get("/v1/videos", headers=ADMIN).json()["data"] == []


def test_records_from_before_tenancy_belong_to_local():
    assert Tenant("local").owns({"id": "v"}) and not Tenant("kabc").owns({"id": "v"})
    assert Tenant("kabc", admin=True).owns({"id": "v", "owner": "kother"})
    assert Tenant("kabc").listing == "kabc" and Tenant("x", admin=True).listing == "*"
