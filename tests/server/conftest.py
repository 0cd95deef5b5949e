"""Fixtures of the server tests: a real redis-server (one per test session, started on
first use, on a free port) and a clean database per test."""

import pytest

from tests.support.redis import RedisServer, make_client


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server per test session (started on first use, on a free port)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    """A client of the session's server, its database emptied first."""
    client = make_client(redis_server.port)
    client.flushdb()
    yield client
    client.close()
