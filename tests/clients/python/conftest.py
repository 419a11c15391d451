"""Fixtures for the stomp.py suite.

Nothing here starts a server: STOMPLINE_HTTP and STOMPLINE_STOMP (host:port)
name a running stompline; tests/real_clients.rs sets them.
"""

import json
import os
import queue
import secrets
import threading
import urllib.request

import pytest
import stomp

WAIT = 10.0


def _addr(name):
    value = os.environ.get(name)
    if not value:
        pytest.exit(
            f"{name} is not set: run this suite through tests/real_clients.rs "
            "or set it to host:port of a running stompline",
            returncode=2,
        )
    host, _, port = value.rpartition(":")
    return host, int(port)


def unique(prefix):
    return f"{prefix}-{secrets.token_hex(5)}"


class User:
    def __init__(self, uid, username, password, access_token):
        self.id = uid
        self.username = username
        self.password = password
        self.access_token = access_token


class Recorder(stomp.ConnectionListener):
    """Records what a connection receives, for tests to wait on."""

    def __init__(self):
        self.messages = queue.Queue()
        self.errors = queue.Queue()
        self.connected = queue.Queue()
        self.heartbeats = 0
        self.heartbeat_timeouts = 0
        self.disconnected = threading.Event()
        self._receipts = {}
        self._lock = threading.Lock()

    def on_connected(self, frame):
        self.connected.put(frame)

    def on_message(self, frame):
        self.messages.put(frame)

    def on_error(self, frame):
        self.errors.put(frame)

    def on_receipt(self, frame):
        self._receipt_event(frame.headers["receipt-id"]).set()

    def on_heartbeat(self):
        self.heartbeats += 1

    def on_heartbeat_timeout(self):
        self.heartbeat_timeouts += 1

    def on_disconnected(self):
        self.disconnected.set()

    def _receipt_event(self, receipt_id):
        with self._lock:
            return self._receipts.setdefault(receipt_id, threading.Event())

    def has_receipt(self, receipt_id):
        return self._receipt_event(receipt_id).is_set()

    def wait_receipt(self, receipt_id, timeout=WAIT):
        assert self._receipt_event(receipt_id).wait(timeout), f"no RECEIPT {receipt_id} within {timeout}s"

    def next_message(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no MESSAGE within {timeout}s") from None

    def next_error(self, timeout=WAIT):
        try:
            return self.errors.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no ERROR within {timeout}s") from None


@pytest.fixture(scope="session")
def http_addr():
    return _addr("STOMPLINE_HTTP")


@pytest.fixture(scope="session")
def stomp_addr():
    return _addr("STOMPLINE_STOMP")


@pytest.fixture
def register(http_addr):
    """register(prefix) -> User, a freshly registered account."""

    def _register(prefix="py"):
        username = unique(prefix)[:32]
        password = f"password-{username}"
        req = urllib.request.Request(
            f"http://{http_addr[0]}:{http_addr[1]}/api/auth/register",
            data=json.dumps({"username": username, "password": password}).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=WAIT) as res:
            assert res.status == 201, res.status
            body = json.load(res)
        return User(body["user"]["id"], username, password, body["accessToken"])

    return _register


@pytest.fixture
def open_connection(stomp_addr):
    """open_connection(**kw) -> (conn, recorder), not yet connected; closed at teardown."""
    opened = []

    def _open(**kwargs):
        kwargs.setdefault("reconnect_attempts_max", 1)
        conn = stomp.Connection12([stomp_addr], **kwargs)
        rec = Recorder()
        conn.set_listener("rec", rec)
        opened.append(conn)
        return conn, rec

    yield _open
    for conn in opened:
        try:
            if conn.is_connected():
                conn.disconnect()
        except Exception:  # already gone: nothing to clean
            pass


@pytest.fixture
def connect_user(register, open_connection):
    """connect_user(prefix, **kw) -> (conn, recorder, user) connected with username/password."""

    def _connect(prefix="py", **kwargs):
        user = register(prefix)
        conn, rec = open_connection(**kwargs)
        conn.connect(user.username, user.password, wait=True)
        return conn, rec, user

    return _connect


def subscribe(conn, rec, destination, sub_id, ack="auto", **headers):
    """Subscribes and waits for the server's RECEIPT so the subscription is live."""
    receipt = unique("sub")
    conn.subscribe(destination, id=sub_id, ack=ack, receipt=receipt, **headers)
    rec.wait_receipt(receipt)
