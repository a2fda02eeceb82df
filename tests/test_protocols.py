"""AMI and ESL parsers against every recorded trace (tests/fixtures, see PROVENANCE.tsv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.cli.main import cli
from controlplane.errors import ProtocolError
from controlplane.protocols.ami import AmiParser, parse_ami, serialize_action
from controlplane.protocols.esl import (
    EslParser,
    decode_event_json,
    decode_event_plain,
    parse_esl,
    serialize_command,
)
from controlplane.protocols.frame import Frame

FIX = Path(__file__).parent / "fixtures"
AMI_FILES = sorted((FIX / "ami").iterdir())
ESL_FILES = sorted((FIX / "esl").iterdir())

# Frame counts checked by reading each file; errors are the trace's own defects.
AMI_EXPECTED = {
    "getAmiFixtureQueueMembers.raw": (9, 0),
    "getAmiFixtureQueues.raw": (45, 0),
    "test__fixtures__ami.dump": (9, 1),
    "tests__fixtures__originate_with_events.yaml": (750, 0),
    "tests__fixtures__pjsip_show_endpoint.yaml": (7, 0),
    "tests__fixtures__queue_status.yaml": (9, 0),
}


def test_every_trace_has_provenance() -> None:
    lines = (FIX / "PROVENANCE.tsv").read_text().splitlines()
    named = {ln.split("\t")[0] for ln in lines[1:]}
    for f in AMI_FILES + ESL_FILES:
        assert f"{f.parent.name}/{f.name}" in named, f


@pytest.mark.parametrize("path", AMI_FILES, ids=lambda p: p.name)
def test_every_ami_trace_parses(path: Path) -> None:
    frames, errors = parse_ami(path.read_bytes())
    assert frames
    if path.name in AMI_EXPECTED:
        assert (len(frames), len(errors)) == AMI_EXPECTED[path.name]
    else:
        assert errors == []
    for f in frames:
        assert f.items, f


@pytest.mark.parametrize("path", ESL_FILES, ids=lambda p: p.name)
def test_every_esl_trace_parses(path: Path) -> None:
    frames, errors = parse_esl(path.read_bytes())
    assert frames
    # Two captures carry hand-edited defects, each reported with its offset:
    # cgrates line 2266 glues "uuid_transfer " onto a Content-Length header;
    # eventstream2 has bodies longer than their Content-Length.
    expected_errors = {"cgrates-fsock__test_data.txt": 1, "tests__data__eventstream2.txt": 2}
    assert len(errors) == expected_errors.get(path.name, 0), [str(e) for e in errors]
    for f in frames:
        if f.get("Content-Type") == "text/event-plain" and "Content-Length" in f:
            assert decode_event_plain(f).items


def _chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i : i + n])
        i += n
        k += 1
    return out


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20))
@pytest.mark.parametrize("path", AMI_FILES, ids=lambda p: p.name)
def test_ami_random_chunking_gives_same_frames(path: Path, sizes: list[int]) -> None:
    data = path.read_bytes()
    whole, errs = parse_ami(data)
    p = AmiParser()
    got: list[Frame] = []
    for c in _chunked(data, sizes):
        got += p.feed(c)
    got += p.finish()
    assert got == whole
    assert [f.offset for f in got] == [f.offset for f in whole]
    assert [str(e) for e in p.errors] == [str(e) for e in errs]


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20))
@pytest.mark.parametrize("path", ESL_FILES, ids=lambda p: p.name)
def test_esl_random_chunking_gives_same_frames(path: Path, sizes: list[int]) -> None:
    data = path.read_bytes()
    whole, _ = parse_esl(data)
    p = EslParser()
    got: list[Frame] = []
    for c in _chunked(data, sizes):
        got += p.feed(c)
    got += p.feed(b"\n\n") if p._buf.strip(b"\n") and p._pending is None else []
    assert got == whole


def test_ami_repeated_keys_case_and_order() -> None:
    frames, _ = parse_ami((FIX / "ami" / "tests__fixtures__sip_notify.yaml").read_bytes())
    f = frames[0]  # the SIPnotify action repeats Variable
    key = next(k for k, _ in f.items if k.lower() == "variable")
    assert len(f.getall("variable")) > 1
    assert f.getall(key.upper()) == f.getall(key.lower()) == [v for k, v in f.items if k == key]
    assert isinstance(f.to_json_obj()[key], list)
    q, _ = parse_ami((FIX / "ami" / "getAmiFixtureQueues.raw").read_bytes())
    params = next(x for x in q if x.get("event") == "QueueParams")
    assert params.get("SERVICELEVELPERF") == params["ServicelevelPerf"] == "0.0"


def test_ami_crlf_and_lf_and_split_utf8() -> None:
    crlf = "Asterisk Call Manager/9.0.0\r\nEvent: X\r\nName: Zoë 测试\r\n\r\n".encode()
    lf = crlf.replace(b"\r\n", b"\n")
    for data in (crlf, lf):
        p = AmiParser()
        got = []
        for i in range(len(data)):  # one byte at a time splits every UTF-8 character
            got += p.feed(data[i : i + 1])
        assert p.banner == "Asterisk Call Manager/9.0.0"
        assert [f.items for f in got] == [[("Event", "X"), ("Name", "Zoë 测试")]]


def test_ami_glued_frames_are_split_and_follows_output_kept() -> None:
    q, _ = parse_ami((FIX / "ami" / "getAmiFixtureQueues.raw").read_bytes())
    i = next(k for k, f in enumerate(q) if f.get("Event") == "QueueStatusComplete" and f.get("ListItems") == "3")
    assert q[i + 1].get("Response") == "Success" and q[i + 1].get("EventList") == "start"
    d, _ = parse_ami((FIX / "ami" / "test__fixtures__ami.dump").read_bytes())
    follows = [f for f in d if f.get("Response") == "Follows"]
    assert follows[0].body.split("\n") == [
        "first extended response, row 1", "first extended response, row 2", "", "first extended response, row 3"]
    v, _ = parse_ami((FIX / "ami" / "tests__fixtures__command_core_show_version.yaml").read_bytes())
    assert v[1]["ActionID"] == "action/transaction_uid/1/1" and v[1].body.startswith("Asterisk 11.11.0")


def test_ami_malformed_frame_reported_with_offset_and_next_kept() -> None:
    data = b"Event: A\r\n\r\nthis line has no colon\r\nX: 1\r\n\r\nEvent: B\r\n\r\n"
    frames, errors = parse_ami(data, expect_banner=False)
    assert [f["Event"] for f in frames] == ["A", "B"]
    assert len(errors) == 1 and errors[0].offset == 12
    assert "at byte 12" in str(errors[0])


def test_ami_serializer_refuses_injection() -> None:
    assert serialize_action("QueueAdd", [("Queue", "sales"), ("Interface", "PJSIP/1001")]) == (
        b"Action: QueueAdd\r\nQueue: sales\r\nInterface: PJSIP/1001\r\n\r\n")
    with pytest.raises(ProtocolError, match="AMI field MemberName"):
        serialize_action("QueueAdd", [("MemberName", "x\r\nAction: Originate")])


def test_esl_bodies_json_and_background_job() -> None:
    frames, _ = parse_esl((FIX / "esl" / "tests__data__eventstream2.txt").read_bytes())
    reply = frames[0]
    assert reply["Content-Type"] == "command/reply" and reply["Job-UUID"].startswith("1246016f")
    job = decode_event_plain(frames[1])
    assert job["Event-Name"] == "BACKGROUND_JOB" and len(job["Job-UUID"]) == 36
    assert job.body.startswith("+OK")
    ev = Frame([("Content-Type", "text/event-json")],
               json.dumps({"Event-Name": "CUSTOM", "Event-Subclass": "sofia::register", "_body": "x"}))
    j = decode_event_json(ev)
    assert j["event-subclass"] == "sofia::register" and j.body == "x"


def test_esl_url_decoding_and_disconnect_notice() -> None:
    frames, _ = parse_esl((FIX / "esl" / "cgrates-fsock__test_data.txt").read_bytes())
    hb = decode_event_plain(next(f for f in frames if f.get("Content-Type") == "text/event-plain"))
    assert hb["Event-Name"] == "HEARTBEAT" and hb["FreeSWITCH-IPv6"] == "::1"
    assert hb["Event-Info"] == "System Ready"
    ex, _ = parse_esl((FIX / "esl" / "tests__data__eventstream.txt").read_bytes())
    note = next(f for f in ex if f["Content-Type"] == "text/disconnect-notice")
    assert note.body.startswith("Disconnected, goodbye.") and len(note.body.encode()) == int(note["Content-Length"])


def test_esl_split_utf8_body_and_malformed_resync() -> None:
    body = "Event-Name: CUSTOM\nCaller: Zoë\n\n".encode()
    data = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
    data = b"garbage without colon\n\n" + data
    p = EslParser()
    got = []
    for i in range(len(data)):
        got += p.feed(data[i : i + 1])
    assert len(got) == 1 and decode_event_plain(got[0])["Caller"] == "Zoë"
    assert len(p.errors) == 1 and p.errors[0].offset == 0


def test_esl_serializer_refuses_injection() -> None:
    assert serialize_command("api status") == b"api status\n\n"
    with pytest.raises(ProtocolError):
        serialize_command("api status\n\nexit")


def test_events_parse_cli(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["events", "parse", "--protocol", "ami",
                                 str(FIX / "ami" / "getAmiFixtureQueues.raw")])
    assert r.exit_code == 0
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 45 and "45 frames, 0 malformed" in r.stderr
    assert lines[0] == {"Action": "Command", "Command": "queue show", "Amictx": "queue",
                        "Actionid": "bef2eb20211b9@okon.ferry.sip.com"}
    r = CliRunner().invoke(cli, ["events", "parse", "--protocol", "ami", str(FIX / "ami" / "test__fixtures__ami.dump")])
    assert r.exit_code == 1 and "at byte 477" in r.stderr
    r = CliRunner().invoke(cli, ["events", "parse", "--protocol", "esl",
                                 str(FIX / "esl" / "tests__data__eventstream.txt")])
    assert r.exit_code == 0
    objs = [json.loads(x) for x in r.stdout.splitlines()]
    assert objs[3]["Content-Type"] == "text/disconnect-notice" and objs[3]["_body"].startswith("Disconnected")
