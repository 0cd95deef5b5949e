"""Schemathesis generates requests from ``/openapi.json`` (valid and invalid ones) against
the API on a real Redis: no request may get a 5xx. API keys are on, the test sends one;
there is no worker, so videos stay queued (the running-work limit answers 429 after a
while, which is fine: only 5xx fail). A second key fuzzes every route of one video with
the first key's video ids: never a 5xx, never a 2xx (tenancy, issue 12)."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.support.servers import api_only_server

KEY = "fuzz-key"
OTHER = "fuzz-other-key"


@pytest.fixture(scope="module")
def fuzz_server(redis_server, tiny_model_file, tmp_path_factory):
    with api_only_server(tmp_path_factory.mktemp("fuzz"), api_keys=f"{KEY},{OTHER}",
                         model=str(tiny_model_file), redis_url=redis_server.url,
                         redis_prefix="fuzz", image_timeout_s=0.2) as srv:
        yield srv


def test_no_request_gets_a_server_error(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/readyz":  # 503 is its answer here: no worker is running
            continue
        tried.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if case.path == "/v1/images/generations":  # a valid one waits for a worker:
                response = case.call(headers={"Authorization": f"Bearer {KEY}"})  # 504 here
                assert response.status_code < 500 or (
                    response.status_code == 504 and response.json()["error"]["code"]
                    == "timeout"), (response.status_code, response.text)
                return
            case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                                   checks=[not_a_server_error])

        check()
    assert "POST /v1/videos" in tried and "POST /v1/videos/extensions" in tried, tried
    assert "GET /v1/models" in tried and "GET /v1/videos/{video_id}" in tried, tried
    assert "POST /v1/images/generations" in tried, tried


def test_another_key_never_reaches_a_keys_videos(fuzz_server):
    url, own = fuzz_server.url, {"Authorization": f"Bearer {KEY}"}
    ids = []
    for digit in (1, 2):
        reply = httpx.post(f"{url}/v1/videos", json={"prompt": f"digit {digit}"},
                           headers=own)
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["id"])
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if "{video_id}" not in operation.path:
            continue
        tried.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.path_parameters["video_id"] = ids[len(tried) % 2]
            response = case.call(headers={"Authorization": f"Bearer {OTHER}"})
            assert 400 <= response.status_code < 500, (case.method, case.formatted_path,
                                                       response.status_code, response.text)

        check()
    assert "DELETE /v1/videos/{video_id}" in tried and "GET /v1/videos/{video_id}/content" \
        in tried, tried
    for video_id in ids:  # still there, still the first key's
        assert httpx.get(f"{url}/v1/videos/{video_id}", headers=own).status_code == 200
