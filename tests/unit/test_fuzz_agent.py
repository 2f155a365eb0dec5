"""The agent fuzzed request by request: frames with valid checksums whose requests, for every
action, carry deep nesting, huge numbers, wrong types, hostile paths, oversized and misplaced
payloads. Each frame gets exactly one answer; none of them is an internal error (an exception
other than the project's own, which the agent logs and answers as a bug); nothing is written
outside the agent's staging area; and a valid ping is answered afterwards."""

import io
import json
import logging
import shutil
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol import read_all, tiny_artifact

from edgert.device.agent import SCHEMAS, Agent, Bool, Int, Num, Obj
from edgert.device.protocol import HEAD, Code, encode
from edgert.format.artifact import crc32
from edgert.measure import actions as measure_actions

ACTIONS = sorted({*SCHEMAS, *measure_actions.ACTIONS})
PING = 0x7EADBEEF

HOSTILE_PATHS = [
    "../../etc/x", "/etc/passwd", "staging/../artifacts/m/manifest.json", "artifacts/m/x",
    "versions/x", "staging/m/../../../x", "staging/m/\x00x", "staging/m/.x", "staging//x",
    "staging/m/" + "a/" * 40 + "x", "staging/m/" + "x" * 5000, "staging\\m\\x", "~/x",
    "staging/m/$(touch PWNED)", "staging/m/ä", "staging/evil/link/x", ".", "", "staging",
]  # fmt: skip
HUGE = [2**63, -(2**63), 2**64 + 1, 10**30, -1, 1e308, -1e308, 1e-320, -0.0, float("inf"),
        float("-inf"), float("nan")]  # fmt: skip


def nest(depth: int, leaf=0):
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(HOSTILE_PATHS),
)  # fmt: skip
weird = st.one_of(
    scalars,
    st.integers(20, 31).map(nest),  # deep but under the frame's limit
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
)


def plausible(key: str, f) -> st.SearchStrategy:
    """Values near what the field expects (in range, at its bounds, just past them)."""
    if isinstance(f, Int):
        return st.one_of(st.integers(f.lo, min(f.hi, f.lo + 4096)),
                         st.sampled_from([f.lo - 1, f.hi, f.hi + 1]))  # fmt: skip
    if isinstance(f, Num):
        return st.floats(f.lo - 1, f.hi + 1)
    if isinstance(f, Bool):
        return st.booleans()
    if isinstance(f, Obj):
        return st.fixed_dictionaries({}, optional={k: plausible(k, g) for k, g in f.fields.items()})
    if key == "name":
        return st.sampled_from(["m", "q", "nope", "m/../m", "-m"])
    if key == "path":
        return st.sampled_from(["staging/q/manifest.json", "staging/q/weights/resident.bin",
                                "staging/m/x", "staging/q/a", "staging/q/a/b"])  # fmt: skip
    if key == "staging":
        return st.sampled_from(["staging/q", "staging/m", "staging/nope"])
    if getattr(f, "choices", ()):
        return st.sampled_from([*f.choices, "other"])
    return st.text(max_size=40)


@st.composite
def requests(draw):
    """One REQUEST frame (bytes) with valid checksums."""
    action = draw(st.sampled_from([*ACTIONS, "no.such", ""]))
    fields = SCHEMAS[action].fields if action in SCHEMAS else {}
    args = {}
    for key, f in fields.items():
        how = draw(st.sampled_from(["omit", "plausible", "plausible", "plausible", "weird"]))
        if how == "plausible":
            args[key] = draw(plausible(key, f))
        elif how == "weird":
            args[key] = draw(weird)
    args.update(draw(st.dictionaries(st.text(max_size=6), weird, max_size=2)))
    takes = SCHEMAS[action].payload if action in SCHEMAS else 0
    payload = draw(st.binary(max_size=64)) if takes or draw(odds(1, 6)) else b""
    if "crc32" in args and draw(st.booleans()):
        args["crc32"] = crc32(payload)  # past the checksum: the rest of the request is tested
    if action == "file.put" and draw(st.booleans()):
        args["size"] = draw(st.integers(0, 1 << 62))
    rid = draw(weird) if draw(odds(1, 6)) else draw(st.integers(0, 1000))
    header = {"id": rid, "action": action, "args": draw(weird) if draw(odds(1, 6)) else args}
    return encode(Code.REQUEST, header, payload)


def odds(k: int, n: int) -> st.SearchStrategy:
    """True ``k`` times in ``n``."""
    return st.integers(1, n).map(lambda i: i <= k)


def raw_frame(header: bytes, payload: bytes = b"") -> bytes:
    """A REQUEST frame around any header bytes (what encode() could not produce)."""
    body_crc = zlib.crc32(payload, zlib.crc32(header)) & 0xFFFFFFFF
    head = HEAD.pack(b"EDRT", 1, int(Code.REQUEST), 0, len(header), len(payload), body_crc, 0)
    head = head[:20]
    return head + zlib.crc32(head).to_bytes(4, "little") + header + payload


@st.composite
def raw_requests(draw):
    """Headers no JSON encoder here would write: nesting past any limit, numbers of thousands
    of digits, non-objects, broken UTF-8."""
    action = json.dumps(draw(st.sampled_from(ACTIONS))).encode()
    depth = draw(st.sampled_from([33, 999, 5000, 200_000]))
    where = draw(st.sampled_from(["args", "id", "field", "top"]))
    deep = b"[" * depth + b"]" * depth
    digits = b"9" * draw(st.sampled_from([4301, 20_000]))
    return raw_frame(draw(st.sampled_from([
        {"args": b'{"id":1,"action":%s,"args":%s}' % (action, deep),
         "id": b'{"id":%s,"action":%s}' % (deep, action),
         "field": b'{"id":1,"action":%s,"args":{"name":%s,"path":%s}}' % (action, deep, deep),
         "top": deep}[where],
        b'{"id":1,"action":%s,"args":{"offset":%s,"n_predict":%s}}' % (action, digits, digits),
        b'{"id":1,"action":%s,"args":{"offset":1e999,"temp":-1e999,"ctx":NaN}}' % action,
        b'[1, 2, 3]', b'"just a string"', b'{"id":1,"action":"\xff\xfe"}', b"",
    ])))  # fmt: skip


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """An agent root with a deployed artifact ``m``, a staged one ``q``, and a link in the
    staging area that leads to the deployed artifact."""
    root = tmp_path_factory.mktemp("tpl") / "a" / "b" / "root"
    tiny_artifact(root / "staging" / "m", 1.0)
    out = io.BytesIO()
    req = encode(Code.REQUEST, {"id": 1, "action": "file.commit",
                                "args": {"staging": "staging/m", "name": "m"}})  # fmt: skip
    Agent(io.BytesIO(req), out, root=root).serve()
    assert (root / "artifacts" / "m" / "manifest.json").exists()
    tiny_artifact(root / "staging" / "q", 2.0)
    (root / "staging" / "evil").mkdir()
    (root / "staging" / "evil" / "link").symlink_to(root / "artifacts" / "m")
    return root.parents[2]


class Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def snapshot(top):
    return {p.relative_to(top): p.read_bytes() for p in top.rglob("*") if p.is_file()}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(frames=st.lists(st.one_of(requests(), requests(), raw_requests()), min_size=1,
                       max_size=6))  # fmt: skip
def test_agent_fuzzed_by_request(template, tmp_path_factory, frames):
    top = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(template, top, dirs_exist_ok=True, symlinks=True)
    root = top / "a" / "b" / "root"
    link = root / "staging" / "evil" / "link"
    link.unlink()
    link.symlink_to(root / "artifacts" / "m")  # the copy's own
    deployed = snapshot(root / "versions")
    stream = b"".join(frames) + encode(Code.REQUEST, {"id": PING, "action": "device.info"})
    out = io.BytesIO()
    errors = Errors()
    log = logging.getLogger("edgert.device.agent")
    log.addHandler(errors)
    try:
        agent = Agent(io.BytesIO(stream), out, root=root,
                      extra=(measure_actions.ACTIONS, measure_actions.CAPABILITIES))  # fmt: skip
        while agent.serve(greet=False) == "shutdown":  # a shutdown ends a session, not the test
            pass
    finally:
        log.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]
    got = read_all(out.getvalue())
    assert not [g for g in got if isinstance(g, str)]  # the agent writes only good frames
    answers = [g for g in got if g.code in (Code.REPLY, Code.ERROR)]
    assert len(answers) == len(frames) + 1
    assert answers[-1].code == Code.REPLY and answers[-1].header["id"] == PING
    # nothing outside the staging area changed, but through a commit that was accepted
    committed = any(a.code == Code.REPLY and "committed" in a.header for a in answers)
    if not committed:
        assert snapshot(root / "versions") == deployed
    kept = {root, *root.parents}
    outside = [p for p in top.rglob("*") if root not in p.parents and p not in kept]
    assert outside == []
