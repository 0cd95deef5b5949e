"""The streams benchmark command runs end to end (tiny model, two short levels); its
numbers are printed and written, never asserted against targets."""

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
