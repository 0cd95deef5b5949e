"""Benchmark commands run end to end on the tiny model (streams: two short levels;
context use: the loss table); their numbers are printed and written, never asserted."""

import json

from bench.streams import main

pytest_plugins = ["tests.test_server_support"]


def test_streams_benchmark_runs(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "streams.json"
    assert main(["--model", str(tiny_model_file), "--streams", "1", "3", "--seconds", "2",
                 "--threads", "1", "--json", str(out), "--log", str(tmp_path / "s.log")]) == 0
    data = json.loads(out.read_text())
    assert [r["streams"] for r in data["results"]] == [1, 3]
    for r in data["results"]:
        assert r["streams_without_frames"] == 0 and r["frames_per_s_total"] > 0
        assert r["ttff_p50_s"] <= r["ttff_p95_s"]
        assert "memory_per_session_KiB" in r
    assert "3 streams:" in capsys.readouterr().out


def test_context_use_reports_losses_per_frame():
    from bench.context_use import context_losses
    from tests.conftest import randomized_model

    losses = context_losses(randomized_model().float(), clips=2, frames=4, levels=(0.9,))
    row = losses["t=0.9"]
    assert set(row) == {"frame_0", "frame_1", "frame_2", "frame_3", "frame_3_shuffled_past"}
    assert all(v > 0 for v in row.values())
