"""The online store's door for serving containers: the serving app's reader works through it; nothing
else a model could send does, and the door's Redis login never reaches the model.

A real door (the router's, ``asgard.local.online_door``) in front of the machine's Redis, logged in as an
ACL user made for the test; clients on its unix socket as a container's would be.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import pytest
import redis

from asgard.local.online_door import (
    SOCKET_NAME,
    OnlineStoreDoor,
    Policy,
    ensure_reader_login,
    reader_login_url,
    reader_script,
)
from asgard_serving.online import HMGET_EACH, _RedisStore

STORE_DB, BROKER_DB = 12, 13


@pytest.fixture
def door(tmp_path):
    admin = redis.Redis(host="127.0.0.1", port=6379)
    user, password = f"asgard_door_{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(12)
    # The login the production profile makes for its door (asgard.local.online_door.prepare_reader_login).
    ensure_reader_login(f"redis://127.0.0.1:6379/{STORE_DB}", user, password, "asgard")
    store, broker = redis.Redis(db=STORE_DB), redis.Redis(db=BROKER_DB)
    store.flushdb()
    broker.flushdb()
    store.hset(b"entity-1asgard", mapping={b"f1": b"v1", b"_ts:view": b"\x08\x01"})
    broker.hset(b"entity-1asgard", mapping={b"f1": b"the broker's"})
    broker.set(b"celery-task", b"secret")
    folder = tmp_path / "door"
    upstream = reader_login_url(f"redis://127.0.0.1:6379/{STORE_DB}", user, password)
    assert upstream == f"redis://{user}:{password}@127.0.0.1:6379/{STORE_DB}"
    OnlineStoreDoor(folder, upstream, Policy(reader_script())).serve_forever()
    try:
        yield folder / SOCKET_NAME, password, user
    finally:
        admin.acl_deluser(user)
        store.flushdb()
        broker.flushdb()


def test_the_serving_readers_script_reads_features_through_the_door(door):
    socket_path, *_ = door
    client = redis.Redis(unix_socket_path=str(socket_path), protocol=2)
    assert client.ping() is True
    hmget_each = client.register_script(HMGET_EACH)
    assert hmget_each(keys=[b"entity-1asgard", b"nobody-asgard"], args=[b"f1", b"_ts:view"]) == [
        [b"v1", b"\x08\x01"],
        [None, None],
    ]
    assert client.hmget(b"entity-1asgard", [b"f1"]) == [b"v1"]  # the store's database, not the broker's


def test_the_serving_apps_reader_itself_works_through_the_door(door):
    socket_path, *_ = door
    views = [{"features": [{"redis_field": b"f1".hex()}], "redis_ts_field": "_ts:view"}]

    async def read():
        store = _RedisStore(f"unix://{socket_path}?protocol=2", views, "asgard")
        try:
            return await store.read([b"entity-1", b"nobody-"])
        finally:
            await store.close()

    (found,) = asyncio.run(read())
    assert list(found) == [b"entity-1"] and found[b"entity-1"][0] == [b"v1"]


@pytest.mark.parametrize(
    "command",
    [
        ("SELECT", BROKER_DB),
        ("GET", "celery-task"),
        ("KEYS", "*"),
        ("SCAN", 0),
        ("SET", "x", "1"),
        ("HSET", "entity-1asgard", "f1", "forged"),
        ("DEL", "entity-1asgard"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
        ("AUTH", "default", "x"),
        ("EVAL", "return redis.call('select', 13)", 0),
        ("EVALSHA", "0" * 40, 0),
        ("SCRIPT", "LOAD", "return redis.call('flushall')"),
        ("SCRIPT", "FLUSH"),
        ("MODULE", "LIST"),
        ("DEBUG", "SLEEP", 0),
        ("SHUTDOWN",),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("MONITOR",),
        ("HELLO", 3),
    ],
)
def test_every_other_command_is_answered_by_the_door_and_never_reaches_redis(door, command):
    socket_path, *_ = door
    client = redis.Redis(unix_socket_path=str(socket_path), protocol=2)
    with pytest.raises(redis.ResponseError, match=r"asgard door: .* is not open to models"):
        client.execute_command(*command)
    # The connection goes on, and nothing changed.
    assert client.ping() is True
    assert redis.Redis(db=STORE_DB).hget(b"entity-1asgard", b"f1") == b"v1"
    assert redis.Redis(db=BROKER_DB).get(b"celery-task") == b"secret"


def test_what_is_not_redis_protocol_ends_the_connection(door):
    import socket

    socket_path, password, _ = door
    for garbage in (b"GET celery-task\r\n", b"*1\r\n:5\r\n", b"*99999999999\r\n", b"*1\r\n$999999999999\r\n"):
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(10)
            raw.connect(str(socket_path))
            raw.sendall(garbage)
            answer = raw.recv(4096)
            assert answer.startswith(b"-ERR asgard door: ") and password.encode() not in answer, answer
            assert raw.recv(4096) == b""  # closed


def test_a_huge_command_ends_the_connection_before_the_router_holds_it(door):
    """Five bulk strings of 60 MB took the router (where the door runs) from 20 MB to 562 MB: each
    string and each command now has a cap far above the reader's largest, checked as it comes."""
    import socket

    socket_path, *_ = door
    for header in (b"*5\r\n$62914560\r\n", b"*2\r\n$5\r\nHMGET\r\n$1048577\r\n", b"*100001\r\n"):
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(10)
            raw.connect(str(socket_path))
            raw.sendall(header)
            answer = raw.recv(4096)
            assert answer.startswith(b"-ERR asgard door: "), answer
    # Seven 1 MB arguments beside the name fit; the eighth's header already passes the command's cap.
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(30)
        raw.connect(str(socket_path))
        chunk = b"$1048576\r\n" + b"k" * 1048576 + b"\r\n"
        raw.sendall(b"*10\r\n$5\r\nHMGET\r\n" + chunk * 7 + b"$1048576\r\n")
        answer = raw.recv(4096)
        assert answer.startswith(b"-ERR asgard door: a command over 8388608 bytes"), answer


@pytest.mark.parametrize(
    "command",
    [
        ("GET", "celery-task"),
        ("HMGET", "celery-task", "f1"),
        ("KEYS", "*"),
        ("SET", "x", "1"),
        ("HSET", "entity-1asgard", "f1", "forged"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("EVAL", "return redis.call('get', 'celery-task')", 0),
        ("ACL", "LIST"),
    ],
)
def test_the_doors_own_login_may_only_read_feature_keys(door, command):
    """Behind the door's checks, Redis itself holds the door's login to the reader's commands on feature
    keys (Feast's end in the project's name): were the door's checks ever passed, nothing else is open."""
    _, password, user = door
    login = redis.Redis(host="127.0.0.1", port=6379, db=STORE_DB, username=user, password=password)
    assert login.hmget(b"entity-1asgard", [b"f1"]) == [b"v1"]
    with pytest.raises(redis.exceptions.NoPermissionError):
        login.execute_command(*command)
    assert redis.Redis(db=BROKER_DB).get(b"celery-task") == b"secret"


def test_a_read_too_big_for_the_platforms_redis_is_refused_by_the_door(door):
    """Redis runs a script on its one thread, which the Celery broker shares: 92,000 keys x 8,000 fields
    of the reader's own script would stall it for minutes (found by a hostile review). The door bounds
    keys, fields and both at once, far above what the serving app asks."""
    socket_path, *_ = door
    client = redis.Redis(unix_socket_path=str(socket_path), protocol=2)
    sha = client.script_load(HMGET_EACH)
    for keys, fields in ((10_001, 1), (1, 1_025), (1_001, 1_000)):  # too many keys, fields, cells
        arguments = [f"k{index}asgard" for index in range(keys)] + [f"f{index}" for index in range(fields)]
        with pytest.raises(redis.ResponseError, match="asgard door: a read of"):
            client.evalsha(sha, keys, *arguments)
    with pytest.raises(redis.ResponseError, match="key count does not match"):
        client.execute_command("EVALSHA", sha, 5, "k1asgard")
    with pytest.raises(redis.ResponseError, match="asgard door: a read of 1 keys x 1025 fields"):
        client.hmget("entity-1asgard", [f"f{index}" for index in range(1_025)])
    # What the serving app asks (its default limit of 1,000 ids, a few dozen fields) passes.
    keys = [b"entity-1asgard"] + [f"k{index}asgard".encode() for index in range(999)]
    assert client.evalsha(sha, len(keys), *keys, b"f1", *[f"g{index}" for index in range(63)])[0][0] == b"v1"


def test_a_door_relays_a_bounded_number_of_connections(door):
    from asgard.local.online_door import MAX_CONNECTIONS

    socket_path, *_ = door
    held = [redis.Redis(unix_socket_path=str(socket_path), protocol=2) for _ in range(MAX_CONNECTIONS)]
    for client in held:
        assert client.ping() is True
    with pytest.raises(redis.exceptions.RedisError, match="at most 64 connections at once"):
        redis.Redis(unix_socket_path=str(socket_path), protocol=2).ping()
    held[0].close()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert redis.Redis(unix_socket_path=str(socket_path), protocol=2).ping() is True
            break
        except redis.exceptions.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    for client in held[1:]:
        client.close()
