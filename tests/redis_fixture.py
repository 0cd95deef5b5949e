"""Redis fixtures: one redis-server per test session, an emptied database per test.

A test module gets them with ``pytest_plugins = ["tests.redis_fixture"]`` (tests/conftest.py
could list it too). The server helpers are in ``tests/redis_helpers.py``.
"""

from collections.abc import Iterator

import pytest
import redis

from tests.redis_helpers import RedisServer, make_client


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's server, its database emptied first."""
    client = make_client(redis_server.port)
    client.flushdb()
    yield client
    client.close()
