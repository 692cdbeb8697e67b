"""AMP boxes over a blocking socket, written from docs/protocol.md §2 alone.

The conformance suite must not share code with the implementation it checks: a bug in
jobreactor's command classes would otherwise pass its own test. So this module encodes and
decodes boxes itself, and a :class:`Peer` is a plain blocking socket with deadlines (a check is
a short sequential script: send this, expect that within N seconds).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from typing import Any

#: One value's limit (§2.2).
VALUE_LIMIT = 0xFFFF

Box = dict[bytes, bytes]


class Closed(Exception):
    """The other side closed the connection."""


class NoAnswer(Exception):
    """Nothing (or not the expected box) arrived within the check's timeout."""


def encode_box(box: Box) -> bytes:
    """A box on the wire: each key and value with a 2-byte big-endian length, then 0x0000."""
    parts = []
    for key, value in box.items():
        if not 1 <= len(key) <= 255 or len(value) > VALUE_LIMIT:
            raise ValueError(f"key {key!r} or its value is too long for AMP")
        parts += [struct.pack(">H", len(key)), key, struct.pack(">H", len(value)), value]
    parts.append(b"\x00\x00")
    return b"".join(parts)


def decode_boxes(buffer: bytes) -> tuple[list[Box], bytes]:
    """The complete boxes at the start of ``buffer``, and the bytes left over."""
    boxes: list[Box] = []
    box: Box = {}
    at = start = 0
    while True:
        if len(buffer) - at < 2:
            return boxes, buffer[start:]
        (key_length,) = struct.unpack(">H", buffer[at : at + 2])
        if key_length == 0:
            boxes.append(box)
            box = {}
            at += 2
            start = at
            continue
        if len(buffer) - at < 2 + key_length + 2:
            return boxes, buffer[start:]
        key = buffer[at + 2 : at + 2 + key_length]
        (value_length,) = struct.unpack(">H", buffer[at + 2 + key_length : at + 4 + key_length])
        end = at + 4 + key_length + value_length
        if len(buffer) < end:
            return boxes, buffer[start:]
        box[key] = buffer[at + 4 + key_length : end]
        at = end


def json_value(value: Any) -> bytes:
    """Compact JSON, as §2.4 says."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


def put_json(box: Box, key: str, value: Any) -> None:
    """Store a JSON value under ``key``, split into ``key``, ``key.2``, ... above 65,535 bytes."""
    data = json_value(value)
    pieces = [data[i : i + VALUE_LIMIT] for i in range(0, len(data), VALUE_LIMIT)] or [b""]
    box[key.encode()] = pieces[0]
    for number, piece in enumerate(pieces[1:], start=2):
        box[f"{key}.{number}".encode()] = piece


def get_json(box: Box, key: str) -> Any:
    """Join the pieces of a JSON value (§2.5) and decode it."""
    if key.encode() not in box:
        raise KeyError(key)
    pieces = [box[key.encode()]]
    number = 2
    while f"{key}.{number}".encode() in box:
        pieces.append(box[f"{key}.{number}".encode()])
        number += 1
    return json.loads(b"".join(pieces))


def arguments(**values: Any) -> Box:
    """A box of arguments: ``bytes`` as they are, ``str`` as Unicode, ``int`` as Integer,
    anything else (lists, dicts, None) as JSON."""
    box: Box = {}
    for key, value in values.items():
        if isinstance(value, bytes):
            box[key.encode()] = value
        elif isinstance(value, str):
            box[key.encode()] = value.encode("utf-8")
        elif isinstance(value, int) and not isinstance(value, bool):
            box[key.encode()] = str(value).encode("ascii")
        else:
            put_json(box, key, value)
    return box


class Reply:
    """An answer or error box to one of our commands."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.is_error = b"_error" in box

    @property
    def code(self) -> str:
        return self.box.get(b"_error_code", b"").decode("utf-8", "replace")

    @property
    def description(self) -> str:
        return self.box.get(b"_error_description", b"").decode("utf-8", "replace")

    def json(self, key: str) -> Any:
        return get_json(self.box, key)

    def text(self, key: str) -> str:
        return self.box[key.encode()].decode("utf-8")

    def integer(self, key: str) -> int:
        return int(self.box[key.encode()].decode("ascii"))

    def __repr__(self) -> str:
        if self.is_error:
            return f"error {self.code}: {self.description}"
        shown = {k.decode(): v[:80] for k, v in self.box.items() if not k.startswith(b"_")}
        return f"answer {shown}"


class Peer:
    """One connection, read with deadlines. Heartbeats from the other side are answered as
    they arrive; other commands wait in :attr:`commands` until a check takes them."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._tag = 0
        self._replies: dict[bytes, Box] = {}
        self.commands: list[Box] = []
        self.closed = False
        self.heartbeats_received = 0

    @classmethod
    def connect(cls, host: str, port: int, timeout: float) -> Peer:
        sock = socket.create_connection((host, port), timeout=timeout)
        return cls(sock, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed = True

    # -- sending -----------------------------------------------------------------------

    def send(self, box: Box) -> None:
        self.send_raw(encode_box(box))

    def send_raw(self, data: bytes) -> None:
        """Send encoded boxes in one write (so the other side may read them together)."""
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise Closed(f"could not send: {error}") from None

    def ask(self, command: str, **values: Any) -> bytes:
        """Send a command; return its ``_ask`` tag."""
        self._tag += 1
        tag = str(self._tag).encode()
        box = {b"_command": command.encode(), b"_ask": tag}
        box.update(arguments(**values))
        self.send(box)
        return tag

    def call(self, command: str, **values: Any) -> Reply:
        """Send a command and wait for its answer or error."""
        return self.reply_to(self.ask(command, **values))

    def answer(self, command: Box, **values: Any) -> None:
        box = {b"_answer": command[b"_ask"]}
        box.update(arguments(**values))
        self.send(box)

    def refuse(self, command: Box, code: str, description: str) -> None:
        self.send(
            {
                b"_error": command[b"_ask"],
                b"_error_code": code.encode(),
                b"_error_description": description.encode(),
            }
        )

    # -- receiving ---------------------------------------------------------------------

    def _read(self, deadline: float) -> None:
        """Read at least one box (or fail at ``deadline``), and sort what came."""
        while True:
            boxes, self._buffer = decode_boxes(self._buffer)
            if boxes:
                for box in boxes:
                    self._sort(box)
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAnswer("nothing arrived")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise NoAnswer("nothing arrived") from None
            except OSError as error:
                self.closed = True
                raise Closed(f"connection lost: {error}") from None
            if not data:
                self.closed = True
                raise Closed("the other side closed the connection")
            self._buffer += data

    def _sort(self, box: Box) -> None:
        if b"_answer" in box:
            self._replies[box[b"_answer"]] = box
        elif b"_error" in box:
            self._replies[box[b"_error"]] = box
        elif box.get(b"_command") == b"Heartbeat":
            self.heartbeats_received += 1
            if b"_ask" in box:
                self.answer(box)
        else:
            self.commands.append(box)

    def reply_to(self, tag: bytes, timeout: float | None = None) -> Reply:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while tag not in self._replies:
            try:
                self._read(deadline)
            except NoAnswer:
                raise NoAnswer("no answer within the timeout") from None
        return Reply(self._replies.pop(tag))

    def next_command(self, name: str | None = None, timeout: float | None = None) -> Box:
        """The next command received (of ``name``, if given), waiting up to ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for box in self.commands:
                if name is None or box.get(b"_command") == name.encode():
                    self.commands.remove(box)
                    return box
            try:
                self._read(deadline)
            except NoAnswer:
                wanted = name or "a command"
                raise NoAnswer(f"no {wanted} arrived") from None

    def quiet_for(self, seconds: float, name: str) -> bool:
        """True if no command ``name`` arrives within ``seconds`` (others are kept)."""
        try:
            box = self.next_command(name, timeout=seconds)
        except NoAnswer:
            return True
        self.commands.insert(0, box)
        return False

    def closed_within(self, seconds: float) -> bool:
        """True if the other side closes the connection within ``seconds``."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._read(deadline)
        except Closed:
            return True
        except NoAnswer:
            return False

    def still_answers(self) -> bool:
        """True if a Heartbeat is answered (the connection is open and the peer alive)."""
        try:
            reply = self.call("Heartbeat")
        except (Closed, NoAnswer):
            return False
        return not reply.is_error


class Listener:
    """The suite's listening socket in the node role."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_server((host, port))
        self.timeout = timeout

    def accept(self, timeout: float) -> Peer:
        self.sock.settimeout(timeout)
        try:
            conn, _ = self.sock.accept()
        except TimeoutError:
            raise NoAnswer(f"no node connected within {timeout:g} s") from None
        return Peer(conn, self.timeout)

    def close(self) -> None:
        self.sock.close()
