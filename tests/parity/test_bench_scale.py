"""tools/bench_scale.py, every stage on a toy shape (tier `parity`: it runs llama.cpp): generate,
compile, predict on the boards, run both engines on the emulated board (root, cgroup v1), and
resume — a second run makes nothing again. The full-size figures are BENCHMARKS.md's."""

import json

import pytest
from bench_scale import main  # tools/ is on sys.path (conftest)

pytestmark = pytest.mark.parity


def test_smoke_pipeline_streams_both_engines_and_resumes(tmp_path, device_emulation, capsys):
    args = ["--smoke", "--case", "qwen3-30b-a3b-clustered", "--dir", str(tmp_path),
            "-r", "1", "-p", "8", "-n", "8"]  # fmt: skip
    assert main(args) == 0
    (s,) = json.loads((tmp_path / "results.json").read_text())
    assert s["bits_per_weight"] == 2.5  # 2-bit codes, float16 scale and zero per 64
    assert s["llama_tg"] > 0 and s["edgert_tg"] > 0 and not any(s["killed"].values())
    # the limit sits between the plan's minimum and the whole model: edgert streams experts
    assert 0 < s["hit_rate"] < 1 and s["edgert_flash_mb_per_token"] > 0
    for side in ("llama", "edgert"):  # one memory limit for both, page cache included
        assert 0 < s[f"{side}_cgroup_peak"] <= s["memory_limit_bytes"]
    assert s["predicted_tg"] > 0 and set(s["boards"]) == {"rpi5", "jetson-orin-nano", "rpi4"}
    r = s["routing"]  # the compiled routing trace's spread over the 16 experts, 8 per token
    assert r["tokens"] > 1 and 8 <= r["distinct_experts_median"] <= 16
    assert 0 <= r["next_token_overlap"] <= 1
    table = capsys.readouterr().out
    assert "| qwen3-30b-a3b-clustered |" in table
    made = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert main(args) == 0  # resumed: every stage's output is reused
    again = {p: p.stat().st_mtime_ns for p in made if p.name != "results.json"}
    assert again == {p: t for p, t in made.items() if p.name != "results.json"}
    # --rerun: the side-by-side runs again (after a change to either engine), nothing else
    assert main([*args, "--rerun"]) == 0
    runs = {p for p in made if p.parent.name == "runs"}
    assert runs
    for p, t in made.items():
        if p.name != "results.json":
            assert (p.stat().st_mtime_ns != t) == (p in runs), p
