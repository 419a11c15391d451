"""Chat through stomp.py over the TCP listener: a direct conversation with
durable receipts, since-seq resume after a dropped connection, and a
non-member refused on /user/queue/errors. The stompjs suite covers the rest
(tests/clients/js/test/chat.test.js)."""

import json
import queue
import socket
import time
import urllib.error
import urllib.request

import pytest

from conftest import WAIT, Recorder, subscribe, unique


class ChatRecorder(Recorder):
    """A Recorder that also keeps RECEIPT frames, for their chat headers."""

    def __init__(self):
        super().__init__()
        self.receipt_frames = {}

    def on_receipt(self, frame):
        self.receipt_frames[frame.headers["receipt-id"]] = frame
        super().on_receipt(frame)

    def receipt(self, receipt_id, timeout=WAIT):
        self.wait_receipt(receipt_id, timeout)
        return self.receipt_frames[receipt_id]


@pytest.fixture
def api(http_addr):
    """api(user, method, path, body=None) -> (status, parsed body or None)."""

    def _call(user, method, path, body=None):
        headers = {"authorization": f"Bearer {user.access_token}"}
        data = None
        if body is not None:
            headers["content-type"] = "application/json"
            data = json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://{http_addr[0]}:{http_addr[1]}/api{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as res:
                status, raw = res.status, res.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, (json.loads(raw) if raw else None)

    return _call


@pytest.fixture
def chat_user(register, open_connection):
    """chat_user(prefix) -> (conn, recorder, user), connected, recorder keeping receipts."""

    def _connect(prefix, user=None):
        user = user or register(prefix)
        conn, _ = open_connection()
        rec = ChatRecorder()
        conn.set_listener("rec", rec)
        conn.connect(user.username, user.password, wait=True)
        return conn, rec, user

    return _connect


def direct(api, a, b):
    status, conv = api(a, "POST", "/conversations", {"type": "direct", "memberIds": [b.id]})
    assert status == 201, conv
    return conv["id"]


def chat_send(conn, rec, cid, body):
    """Sends through /app/chat.send with a receipt; returns the RECEIPT frame."""
    receipt = unique("send")
    conn.send(
        "/app/chat.send",
        json.dumps({"conversationId": cid, "body": body}),
        content_type="application/json",
        receipt=receipt,
    )
    return rec.receipt(receipt)


def next_event(rec, event, timeout=WAIT):
    """The next MESSAGE with header event:<event>, skipping others."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no event:{event} within {timeout}s")
        try:
            m = rec.messages.get(timeout=left)
        except queue.Empty:
            continue
        if m.headers.get("event") == event:
            return m


def quiet(rec, seconds):
    """True when nothing arrives for `seconds`."""
    try:
        m = rec.messages.get(timeout=seconds)
    except queue.Empty:
        return True
    raise AssertionError(f"unexpected MESSAGE {m.headers} {m.body!r}")


def test_direct_conversation_both_ways_with_durable_receipts(api, chat_user):
    alice, rec_a, ua = chat_user("pyca")
    bob, rec_b, ub = chat_user("pycb")
    cid = direct(api, ua, ub)
    topic = f"/topic/chat/{cid}"
    subscribe(alice, rec_a, topic, "t")
    subscribe(bob, rec_b, "/user/queue/messages", "q")

    r = chat_send(alice, rec_a, cid, "hello from stomp.py ✓")
    assert r.headers["seq"] == "1"
    mid = r.headers["chat-message-id"]
    delivered = []
    for rec, dest, sub in ((rec_a, topic, "t"), (rec_b, "/user/queue/messages", "q")):
        m = next_event(rec, "message.created")
        assert m.headers["destination"] == dest
        assert m.headers["subscription"] == sub
        assert m.headers["conversation-id"] == cid
        assert m.headers["seq"] == "1"
        assert m.headers["chat-message-id"] == mid
        assert m.headers["content-type"] == "application/json"
        body = json.loads(m.body)
        assert (body["id"], body["seq"], body["senderId"], body["body"]) == (mid, 1, ua.id, "hello from stomp.py ✓")
        delivered.append(body)

    # Bob answers with a plain SEND to the topic.
    bob.send(topic, "hi alice", receipt="plain")
    r = rec_b.receipt("plain")
    assert r.headers["seq"] == "2"
    m = next_event(rec_a, "message.created")
    body = json.loads(m.body)
    assert (body["seq"], body["senderId"], body["body"]) == (2, ub.id, "hi alice")
    assert body["id"] == r.headers["chat-message-id"]
    assert json.loads(next_event(rec_b, "message.created").body) == body

    status, history = api(ub, "GET", f"/conversations/{cid}/messages")
    assert status == 200
    assert history["items"] == [delivered[0], body]


def test_resume_with_since_seq_after_a_dropped_connection(api, chat_user, register):
    sender, rec_s, us = chat_user("pyrs")
    reader_user = register("pyrr")
    cid = direct(api, us, reader_user)
    topic = f"/topic/chat/{cid}"
    reader, rec_r, _ = chat_user("pyrr", user=reader_user)
    subscribe(reader, rec_r, topic, "t")

    seen = []
    for i in range(1, 21):
        chat_send(sender, rec_s, cid, f"n{i}")
    while len(seen) < 10:
        seen.append(int(next_event(rec_r, "message.created").headers["seq"]))
    # Drop the connection without DISCONNECT, keep whatever had arrived.
    reader.transport.socket.shutdown(socket.SHUT_RDWR)
    assert rec_r.disconnected.wait(WAIT), "the dropped connection is noticed"
    while True:
        try:
            m = rec_r.messages.get_nowait()
        except queue.Empty:
            break
        if m.headers.get("event") == "message.created":
            seen.append(int(m.headers["seq"]))
    for i in range(21, 41):
        chat_send(sender, rec_s, cid, f"n{i}")

    again, rec_again, _ = chat_user("pyrr", user=reader_user)
    again.subscribe(topic, id="t2", headers={"since-seq": str(seen[-1])}, receipt="resub")
    rec_again.wait_receipt("resub")
    for i in range(41, 51):
        chat_send(sender, rec_s, cid, f"n{i}")
    while len(seen) < 50:
        seen.append(int(next_event(rec_again, "message.created").headers["seq"]))
    assert quiet(rec_again, 0.5)
    assert seen == list(range(1, 51)), "every message once, in seq order"


def test_non_member_is_refused_on_user_queue_errors_and_stays_connected(api, chat_user):
    _, _, ua = chat_user("pyna")
    _, _, ub = chat_user("pynb")
    outsider, rec, _ = chat_user("pyno")
    cid = direct(api, ua, ub)
    subscribe(outsider, rec, "/user/queue/errors", "e")

    outsider.subscribe(f"/topic/chat/{cid}", id="x", receipt="s1")
    e = next_event(rec, "error")
    assert e.headers["receipt-id"] == "s1"
    assert e.headers["code"] == "not_found"
    assert json.loads(e.body) == {"code": e.headers["code"], "message": e.headers["message"]}

    outsider.send(
        "/app/chat.send",
        json.dumps({"conversationId": cid, "body": "intrude"}),
        content_type="application/json",
        receipt="s2",
    )
    e = next_event(rec, "error")
    assert e.headers["receipt-id"] == "s2"
    assert not rec.has_receipt("s1") and not rec.has_receipt("s2"), "a refused frame gets no RECEIPT"

    # Still usable.
    topic = f"/topic/{unique('py-ok')}"
    subscribe(outsider, rec, topic, "ok")
    outsider.send(topic, "fine", receipt="ok")
    rec.wait_receipt("ok")
    assert rec.next_message().body == "fine"
    assert outsider.is_connected()
