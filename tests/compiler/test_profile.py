"""`edgert profile`: the HTML report shows exactly the figures of the JSON; several devices are
profiled concurrently; inventory names resolve to device URLs."""

import json
from html.parser import HTMLParser

import pytest
from conftest import compile_synthetic, run_cli
from edgert.compiler.quant.scheme import QuantScheme

from edgert.measure.profile import headline


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("prof")
    return compile_synthetic(d, "llama", QuantScheme("uniform", 4, 32)).out


class Figures(HTMLParser):
    """The report's figure cells: {(device, key): text}; and whether it loads anything."""

    def __init__(self):
        super().__init__()
        self.cells, self._cur, self.external = {}, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-key" in a:
            self._cur = a["id"]
            self.cells[self._cur] = ""
        for k in ("src", "href"):
            if k in a:
                self.external.append(a[k])

    def handle_data(self, data):
        if self._cur:
            self.cells[self._cur] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._cur = None


def test_html_report_matches_json(art, tmp_path):
    report = tmp_path / "r.html"
    r = run_cli("profile", str(art), "-p", "16", "-n", "8", "-r", "2", "--html", str(report),
                "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["profiles"]["local"]
    parser = Figures()
    parser.feed(report.read_text())
    shown = {k.split(":", 1)[1]: v for k, v in parser.cells.items()}
    assert shown == headline(p)
    assert parser.external == []  # self-contained
    assert "<svg" in report.read_text()
    assert p["bench"]["tg_tok_s"] > 0 and len(p["bench"]["samples"]["tg_tok_s"]) == 2
    assert [x["layer"] for x in p["layers"]] == ["0", "1", "head"]
    assert all(x["ms_per_token"] for x in p["layers"])
    # the decode step's wall time holds the C layers' and head's, and the rest is what is left
    inside = sum(sum(x["ms_per_token"].values()) for x in p["layers"])
    assert p["step_ms_per_token"] > inside > 0
    assert p["outside_forward_ms_per_token"] == pytest.approx(p["step_ms_per_token"] - inside)
    assert p["outside_forward_share"] == pytest.approx(
        p["outside_forward_ms_per_token"] / p["step_ms_per_token"]
    )
    assert p["peak_rss_bytes"] >= max(b for _, b in p["rss_samples"]) > 0


def test_several_devices_and_inventory(art, tmp_path):
    home = tmp_path / "home"
    inv = home / ".config" / "edgert" / "devices.toml"
    inv.parent.mkdir(parents=True)
    inv.write_text(f'[devices.bench-a]\nurl = "local://{tmp_path / "a"}"\n')
    env = {"HOME": str(home)}
    urls = ["bench-a", f"local://{tmp_path / 'b'}"]
    for u in urls:
        r = run_cli("deploy", str(art), u, env=env)
        assert r.returncode == 0, r.stderr
    report = tmp_path / "both.html"
    # 1000 tokens, 4 times: each run lasts about 2 s here, far longer than the agents' start-up
    # differs between them (up to 0.35 s measured), so running together they overlap
    r = run_cli("profile", str(art), "--device", ",".join(urls), "-p", "8", "-n", "1000", "-r",
                "4", "--html", str(report), "--json", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    profiles = json.loads(r.stdout)["profiles"]
    assert sorted(profiles) == sorted(urls)
    for u in urls:
        assert f'data-device="{u}"' in report.read_text()
        assert profiles[u]["device_info"]["cores"] >= 1
    # concurrently: each device's run began before the other's ended (both agents run on this
    # machine, so their clocks are one); one after the other, the runs would not overlap
    (a0, a1), (b0, b1) = (profiles[u]["wall_clock"] for u in urls)
    assert a0 < a1 and b0 < b1
    assert a0 < b1 and b0 < a1, (a0, a1, b0, b1)
    r = run_cli("profile", str(art), "--device", "no-such-pi", env=env)
    assert r.returncode == 2 and "unknown device 'no-such-pi'" in r.stderr
    assert "bench-a" in r.stderr
