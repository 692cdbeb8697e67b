"""The conformance suite's own box codec agrees with Twisted's AMP (protocol.md §2.2, §2.5),
and the suite's runner reports failures (a suite that cannot fail would prove nothing)."""

from __future__ import annotations

import io
import json
import socket
import threading

import pytest
from twisted.protocols import amp

from jobreactor.conformance import distributor
from jobreactor.conformance.__main__ import main
from jobreactor.conformance.runner import Failed, Settings, Skipped, Suite, run_suite
from jobreactor.conformance.wire import decode_boxes, encode_box, get_json, put_json
from jobreactor.protocol import JSON


def test_a_box_encodes_as_twisted_serializes_it() -> None:
    box = {b"_command": b"Hello", b"_ask": b"1", b"name": "żółw".encode(), b"empty": b""}

    # Twisted writes the keys sorted; the order of keys in a box carries no meaning.
    assert encode_box(dict(sorted(box.items()))) == amp.AmpBox(box).serialize()
    assert decode_boxes(encode_box(box)) == ([box], b"")


def test_boxes_decode_across_arbitrary_read_boundaries() -> None:
    boxes = [{b"_answer": b"1", b"drop": b"[]"}, {b"_command": b"Heartbeat", b"_ask": b"2"}]
    stream = b"".join(amp.AmpBox(box).serialize() for box in boxes)
    decoded: list[dict[bytes, bytes]] = []
    rest = b""
    for at in range(len(stream)):  # one byte at a time
        got, rest = decode_boxes(rest + stream[at : at + 1])
        decoded += got

    assert decoded == boxes
    assert rest == b""


def test_a_long_json_value_splits_and_joins_as_jobreactor_does() -> None:
    value = {"blob": "x" * 150_000, "text": "żółw ✓"}
    ours: dict[bytes, bytes] = {}
    put_json(ours, "jobs", value)
    theirs: dict[bytes, bytes] = {}
    JSON().toBox(b"jobs", theirs, {"jobs": value}, None)

    assert ours == theirs
    assert sorted(ours) == [b"jobs", b"jobs.2", b"jobs.3"]
    assert get_json(theirs, "jobs") == value
    assert json.loads(ours[b"jobs"] + ours[b"jobs.2"] + ours[b"jobs.3"]) == value


def test_the_runner_prints_each_check_and_exits_1_on_a_failure() -> None:
    suite = Suite("example")

    @suite.check("4.1", "passes")
    def passes(context: object) -> None:
        pass

    @suite.check("4.2", "fails")
    def fails(context: object) -> None:
        raise Failed("expected X, got Y")

    @suite.check("9", "skips")
    def skips(context: object) -> None:
        raise Skipped("needs an option")

    out = io.StringIO()
    status = run_suite(suite, object, out)

    lines = out.getvalue().splitlines()
    assert status == 1
    assert lines[0].startswith("PASS  §4.1")
    assert lines[1].startswith("FAIL  §4.2")
    assert lines[2].strip() == "expected X, got Y"
    assert lines[3].startswith("SKIP  §9")
    assert lines[-1] == "example: 1 passed, 1 failed, 1 skipped"


def test_the_command_line_refuses_a_bad_address_and_an_unreachable_distributor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["localhost", "--role", "distributor"])
    assert exited.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main([f"127.0.0.1:{port}", "--role", "distributor", "--timeout", "1"]) == 2
    assert f"cannot connect to a distributor at 127.0.0.1:{port}" in capsys.readouterr().err


def test_list_prints_every_check_with_the_section_it_cites(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--role", "distributor", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 20
    assert all(line.startswith("§") for line in lines)
    assert any("a split JSON value with a missing piece is BAD_MESSAGE" in line for line in lines)


class YesMan:
    """A distributor that answers every command with an empty answer and closes nothing:
    what the suite must catch."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.1)
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        rest = b""
        conn.settimeout(0.1)
        with conn:
            while not self.stopped.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                boxes, rest = decode_boxes(rest + data)
                for box in boxes:
                    if b"_ask" in box:
                        conn.sendall(encode_box({b"_answer": box[b"_ask"]}))

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.server.close()


def test_the_suite_fails_a_distributor_that_says_yes_to_everything() -> None:
    yes_man = YesMan()
    wanted = {"3.1", "3.3", "2.3"}
    suite = Suite("distributor")
    suite.checks = [check for check in distributor.suite.checks if check.section in wanted]
    settings = Settings(host="127.0.0.1", port=yes_man.port, timeout=0.5)
    out = io.StringIO()
    try:
        status = run_suite(suite, lambda: distributor.context_for(settings), out)
    finally:
        yes_man.stop()

    lines = out.getvalue().splitlines()
    assert status == 1
    verdicts = [line.split()[:2] for line in lines if line.startswith(("PASS", "FAIL"))]
    assert verdicts and all(verdict == "FAIL" for verdict, _ in verdicts), out.getvalue()
    assert {section.lstrip("§") for _, section in verdicts} == wanted
    assert "expected the error HELLO_FIRST" in out.getvalue()
