"""The envelope both widget protocols share (``widgets/envelope.py``) and its TypeScript mirror
(``js/shared/envelope.ts``): one definition per side, and the two sides agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kerasllm_widget.widgets import envelope as E
from kerasllm_widget.widgets import inspect_protocol, protocol

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "js" / "shared"
PROTOCOLS = (protocol, inspect_protocol)


def _source(name: str) -> str:
    return (SHARED / name).read_text(encoding="utf-8")


def test_envelope_matches_the_typescript_mirror():
    source = _source("envelope.ts")
    keys = re.search(r"export const ENVELOPE_KEYS = \[(.*?)\] as const", source).group(1)
    assert tuple(re.findall(r'"([a-z]+)"', keys)) == E.ENVELOPE_KEYS
    pattern = re.search(r"export const KIND_PATTERN = /(.*?)/;", source).group(1)
    assert pattern == E.KIND_PATTERN
    # Ids: prefix, session, a dash and a counter on both sides.
    assert "`${prefix}${session}-${counter}`" in source
    assert re.fullmatch(r"u[0-9a-z]+-[0-9]+", E.new_id("u"))


@pytest.mark.parametrize(
    "ts_file, module, version_name",
    [
        ("protocol.ts", protocol, "PROTOCOL_VERSION"),
        ("inspect_protocol.ts", inspect_protocol, "INSPECT_PROTOCOL_VERSION"),
    ],
)
def test_both_protocols_use_the_one_envelope_on_each_side(ts_file, module, version_name):
    source = _source(ts_file)
    assert re.search(r'from "\./envelope";', source), f"{ts_file} does not use envelope.ts"
    for duplicate in ("let counter", "function isRecord", "Math.random"):
        assert duplicate not in source, f"{ts_file} defines its own {duplicate!r}"
    assert module.ProtocolError is E.ProtocolError and module.Request is E.Request
    assert module.envelope is E.envelope
    version = re.search(rf"export const {version_name} = (\d+);", source).group(1)
    assert int(version) == module.PROTOCOL_VERSION


def test_every_kind_is_namespaced_and_the_protocols_do_not_share_a_namespace():
    namespaces = []
    for module in PROTOCOLS:
        kinds = module.REQUEST_KINDS | module.RESPONSE_KINDS
        assert all(re.match(E.KIND_PATTERN, kind) for kind in kinds)
        namespaces.append({kind.split(".")[0] for kind in kinds})
    assert not namespaces[0] & namespaces[1]
    # The chat widget routes a message to its inspectors by namespace.
    assert all(
        inspect_protocol.is_inspector_message({"kind": k}) for k in inspect_protocol.REQUEST_KINDS
    )
    assert not any(
        inspect_protocol.is_inspector_message({"kind": k}) for k in protocol.REQUEST_KINDS
    )


FIELDS = {"demo.request": {"name": (str,), "layer": (int,), "note": (str, type(None))}}


def test_parse_request_keeps_the_declared_fields_and_fills_absent_optional_ones():
    request = E.parse_request(
        {"kind": "demo.request", "id": "v1-1", "name": "a", "layer": 2, "extra": 1}, FIELDS
    )
    assert request == E.Request("demo.request", "v1-1", {"name": "a", "layer": 2, "note": None})


@pytest.mark.parametrize(
    "message, problem",
    [
        (["demo.request"], "message object"),
        ({"kind": "demo.request", "name": "a", "layer": 0}, "'id'"),
        ({"kind": "demo.request", "id": "", "name": "a", "layer": 0}, "'id'"),
        ({"kind": "demo.other", "id": "a"}, "unknown message kind"),
        ({"kind": "demo.request", "id": "a", "layer": 0}, "'name' of type str"),
        ({"kind": "demo.request", "id": "a", "name": "a", "layer": True}, "'layer' of type int"),
        ({"kind": "demo.request", "id": "a", "name": "a", "layer": 0, "note": 3}, "str or null"),
    ],
)
def test_parse_request_names_what_is_wrong(message, problem):
    with pytest.raises(E.ProtocolError, match=problem):
        E.parse_request(message, FIELDS)


def test_request_id_of_answers_even_a_malformed_message():
    assert E.request_id_of({"kind": "x", "id": "v1"}) == "v1"
    assert E.request_id_of({"id": 3}) == "" and E.request_id_of("nope") == ""


def test_finite_numbers_are_json_safe():
    assert E.finite(float("inf")) is None and E.finite(None) is None and E.finite(2) == 2.0
