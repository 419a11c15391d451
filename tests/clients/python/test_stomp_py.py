"""stompline driven by stomp.py over the TCP listener."""

import json
import queue
import time

import pytest
import stomp
from stomp.exception import ConnectFailedException

from conftest import WAIT, Recorder, subscribe, unique


# ---- CONNECT


def _check_connected(rec, user):
    frame = rec.connected.get(timeout=WAIT)
    assert frame.headers["version"] == "1.2"
    assert frame.headers["user-id"] == user.id
    assert frame.headers["server"].startswith("stompline/")
    assert frame.headers.get("session")
    return frame


def test_connect_with_username_and_password(register, open_connection):
    user = register("pypw")
    conn, rec = open_connection()
    conn.connect(user.username, user.password, wait=True)
    assert conn.is_connected()
    _check_connected(rec, user)


def test_connect_with_access_token_as_passcode(register, open_connection):
    user = register("pytok")
    conn, rec = open_connection()
    # The login is not looked at when the passcode is a token.
    conn.connect("any-login", user.access_token, wait=True)
    _check_connected(rec, user)


def test_connect_with_bearer_header(register, open_connection):
    user = register("pybear")
    conn, rec = open_connection()
    conn.connect(wait=True, headers={"Authorization": f"Bearer {user.access_token}"})
    _check_connected(rec, user)


def test_wrong_password_fails_with_authentication_failed(register, open_connection):
    user = register("pybad")
    conn, rec = open_connection()
    with pytest.raises(ConnectFailedException):
        conn.connect(user.username, "not-the-password", wait=True)
    err = rec.next_error()
    assert err.headers["message"] == "authentication failed"
    assert rec.connected.empty()
    assert rec.disconnected.wait(WAIT), "the server closes the connection"
    assert not conn.is_connected()


# ---- topics and queues


def test_topic_pub_sub_passes_user_headers(connect_user):
    a, rec_a, _ = connect_user("pytopa")
    b, rec_b, _ = connect_user("pytopb")
    topic = f"/topic/{unique('py-room')}"
    subscribe(a, rec_a, topic, "s-a")
    subscribe(b, rec_b, topic, "s-b")
    a.send(
        topic,
        "hello from stomp.py",
        content_type="text/plain",
        headers={"x-trace": "abc-123", "x-tricky": "a:b\\c\nd"},
    )
    for name, rec, sub in (("a", rec_a, "s-a"), ("b", rec_b, "s-b")):
        m = rec.next_message()
        assert m.body == "hello from stomp.py", name
        assert m.headers["destination"] == topic, name
        assert m.headers["subscription"] == sub, name
        assert m.headers["content-type"] == "text/plain", name
        assert m.headers["x-trace"] == "abc-123", name
        assert m.headers["x-tricky"] == "a:b\\c\nd", name
        assert m.headers.get("message-id"), name
        assert "ack" not in m.headers, name


def test_queue_client_individual_nack_is_redelivered_to_the_other(connect_user):
    a, rec_a, _ = connect_user("pyqa")
    b, rec_b, _ = connect_user("pyqb")
    q = f"/queue/{unique('py-work')}"
    # One queue for both subscriptions' deliveries, tagged by receiver.
    both = queue.Queue()
    for who, rec in (("a", rec_a), ("b", rec_b)):
        rec.on_message = lambda frame, who=who: both.put((who, frame))
    subscribe(a, rec_a, q, "qa", ack="client-individual")
    subscribe(b, rec_b, q, "qb", ack="client-individual")
    a.send(q, "job-1", headers={"x-job": "1"})

    who1, m1 = both.get(timeout=WAIT)
    assert m1.body == "job-1"
    assert m1.headers.get("ack"), "client-individual deliveries carry ack"
    assert m1.headers.get("redelivered") != "true"
    first = a if who1 == "a" else b
    first.nack(m1.headers["ack"])

    who2, m2 = both.get(timeout=WAIT)
    assert who2 != who1, "redelivered to the other subscriber"
    assert m2.body == "job-1"
    assert m2.headers["x-job"] == "1"
    assert m2.headers["redelivered"] == "true"
    second, rec2 = (a, rec_a) if who2 == "a" else (b, rec_b)
    second.ack(m2.headers["ack"], receipt="acked")
    rec2.wait_receipt("acked")

    a.send(q, "job-2")
    _, m3 = both.get(timeout=WAIT)
    assert m3.body == "job-2"
    assert m3.headers.get("redelivered") != "true"
    assert both.empty()


# ---- transactions and receipts


def test_transactions_commit_delivers_and_abort_discards(connect_user):
    pub, _, _ = connect_user("pytxp")
    sub, rec, _ = connect_user("pytxs")
    topic = f"/topic/{unique('py-tx')}"
    subscribe(sub, rec, topic, "t")

    tx = pub.begin()
    pub.send(topic, "in-tx", transaction=tx)
    # A message outside the transaction overtakes the held one.
    pub.send(topic, "outside")
    assert rec.next_message().body == "outside"
    pub.commit(tx)
    assert rec.next_message().body == "in-tx"

    tx2 = pub.begin()
    pub.send(topic, "aborted", transaction=tx2)
    pub.abort(tx2)
    pub.send(topic, "after-abort")
    assert rec.next_message().body == "after-abort"
    assert rec.messages.empty()


def test_receipts_for_subscribe_send_unsubscribe_and_disconnect(connect_user):
    conn, rec, _ = connect_user("pyrcpt")
    topic = f"/topic/{unique('py-rcpt')}"
    conn.subscribe(topic, id="r", receipt="r-sub")
    rec.wait_receipt("r-sub")
    conn.send(topic, "with receipt", receipt="r-send")
    rec.wait_receipt("r-send")
    assert rec.next_message().body == "with receipt"
    conn.unsubscribe(id="r", receipt="r-unsub")
    rec.wait_receipt("r-unsub")
    # disconnect() with a receipt waits for it before closing.
    conn.disconnect(receipt="r-bye")
    assert rec.has_receipt("r-bye")
    assert rec.disconnected.wait(WAIT)


def test_application_error_goes_to_user_queue_errors(connect_user):
    conn, rec, _ = connect_user("pyerr")
    subscribe(conn, rec, "/user/queue/errors", "e")
    conn.send("/topic/chat/1", "hello?", receipt="bad-1")
    m = rec.next_message()
    assert m.headers["event"] == "error"
    assert m.headers["receipt-id"] == "bad-1"
    body = json.loads(m.body)
    assert body["code"] == m.headers["code"]
    assert isinstance(body["message"], str)
    # Still connected; the refused SEND got no RECEIPT.
    conn.send(f"/topic/{unique('py-fine')}", "fine", receipt="ok-1")
    rec.wait_receipt("ok-1")
    assert not rec.has_receipt("bad-1")
    assert rec.errors.empty()
    assert conn.is_connected()


# ---- heart-beats


def test_heart_beats_keep_an_idle_connection_alive(register, open_connection):
    user = register("pyhb")
    # A 3x tolerance for late server beats (stomp.py's default is 1.5x) keeps
    # a loaded machine from failing the test on scheduling jitter.
    conn, rec = open_connection(heartbeats=(1000, 1000), heart_beat_receive_scale=3.0)
    conn.connect(user.username, user.password, wait=True)
    connected = rec.connected.get(timeout=WAIT)
    sx, sy = (int(v) for v in connected.headers["heart-beat"].split(","))
    assert sx > 0 and sy > 0, connected.headers["heart-beat"]
    # Stay idle, only heart-beats flowing, for longer than 3 s. With the
    # server expecting a beat every max(1000, sy) ms, a silent client would
    # be dropped well before this when sy is small (the harness uses 1000).
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert not rec.disconnected.is_set(), "connection dropped while idle"
        time.sleep(0.1)
    assert conn.is_connected()
    assert rec.heartbeat_timeouts == 0
    if sx <= 1000:
        assert rec.heartbeats >= 2, f"server heart-beats seen: {rec.heartbeats}"
    # And it still works.
    topic = f"/topic/{unique('py-hb')}"
    subscribe(conn, rec, topic, "hb")
    conn.send(topic, "still here")
    assert rec.next_message().body == "still here"


# ---- bodies


def test_unicode_body(connect_user):
    conn, rec, _ = connect_user("pyuni")
    topic = f"/topic/{unique('py-uni')}"
    subscribe(conn, rec, topic, "u")
    text = "héllo wörld ✓ — 日本語 — 🚀 emoji"
    conn.send(topic, text, content_type="text/plain;charset=utf-8")
    m = rec.next_message()
    assert m.body == text
    assert m.headers["content-length"] == str(len(text.encode("utf-8")))


def test_binary_body_with_nuls_and_high_bytes(register, open_connection):
    user = register("pybin")
    conn, rec = open_connection(auto_decode=False)
    conn.connect(user.username, user.password, wait=True)
    topic = f"/topic/{unique('py-bin')}"
    subscribe(conn, rec, topic, "b")
    data = bytes([0, 0, 0x80, 0xFF, 0xFE, 0xC3, 0x28, 0x00, 0x0A, 0x0D]) + bytes(range(256)) * 4
    conn.send(topic, data, content_type="application/octet-stream")
    m = rec.next_message()
    assert m.headers["content-length"] == str(len(data))
    assert m.headers["content-type"] == "application/octet-stream"
    assert m.body == data


def test_large_body(connect_user):
    conn, rec, _ = connect_user("pybig")
    topic = f"/topic/{unique('py-big')}"
    subscribe(conn, rec, topic, "big")
    text = ("stomp.py large body – ünïcødé ✓ 0123456789\n" * 6000)[: 300 * 1024]
    conn.send(topic, text)
    m = rec.next_message(timeout=30)
    assert len(m.body) == len(text)
    assert m.body == text


def test_stomp_1_1_connection(register, stomp_addr):
    user = register("py11")
    conn = stomp.Connection11([stomp_addr], reconnect_attempts_max=1)
    rec = Recorder()
    conn.set_listener("rec", rec)
    conn.connect(user.username, user.password, wait=True)
    try:
        assert rec.connected.get(timeout=WAIT).headers["version"] == "1.1"
        topic = f"/topic/{unique('py-11')}"
        subscribe(conn, rec, topic, "s")
        conn.send(topic, "eleven", headers={"x-a": "b"})
        m = rec.next_message()
        assert m.body == "eleven"
        assert m.headers["x-a"] == "b"
    finally:
        conn.disconnect()
