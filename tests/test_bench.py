"""Benchmark commands run end to end on the tiny model (streams: two short levels;
context use: the loss table); their numbers are printed and written, never asserted."""

import json

import pytest

from pomstream.bench.streams import main


@pytest.mark.slow
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
    from pomstream.bench.context_use import context_losses
    from tests.support.models import randomized_model

    losses = context_losses(randomized_model().float(), clips=2, frames=4, levels=(0.9,))
    row = losses["t=0.9"]
    assert set(row) == {"frame_0", "frame_1", "frame_2", "frame_3", "frame_3_shuffled_past",
                        "frame_0_other_prompt", "frame_0_empty_prompt"}
    assert all(v > 0 for v in row.values())


def test_kernel_benchmark_quick_run_records_every_section(tmp_path, capsys):
    """`pomstream bench kernels --quick`: every section runs; on a CPU the GPU-only columns
    say why they are missing instead of holding a number."""
    from pomstream.cli import main as cli

    out = tmp_path / "kernels.json"
    assert cli(["bench", "kernels", "--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["torch"] and data["dispatch"]["requested"] in ("auto", "reference",
                                                                          "triton")
    sections = data["sections"]
    layer = sections["layer"]
    assert {(r["mode"], r["batch"], r["tokens"]) for r in layer} == {
        (m, b, n) for m in ("global", "frame_causal", "padding") for b in (1, 2)
        for n in (256, 512)}
    for r in layer:
        assert r["reference_fwd_ms"] > 0 and r["reference_fwd_bwd_ms"] > 0
        assert r["floor_fwd_ms"] > 0
        assert r["kernels_fwd_ms"].startswith("skipped")  # CUDA only
    assert all(r["attention_fwd_ms"] > 0 for r in layer if r["mode"] != "padding")
    assert [r["earlier_frames"] for r in sections["context"]] == [0, 4, 16]
    assert sections["context"][2]["attention_kv_bytes"] == 2 * 16 * 64 * 64 * 4
    assert [r["sessions"] for r in sections["frame_step"]["rows"]] == [1, 2]
    assert all(r["eager_reference_ms"] > 0 for r in sections["frame_step"]["rows"])
    assert [r["streams"] for r in sections["streaming"]] == [1, 2]
    assert all(r["fps_total"] > 0 for r in sections["streaming"])
    assert {r["mixer"] for r in sections["train"]} == {"pom", "attention"}
    assert all(r["ms_per_step"] > 0 for r in sections["train"])
    assert "== frame_step" in capsys.readouterr().out


def test_bench_names_are_checked(capsys):
    from pomstream.cli import main as cli

    assert cli(["bench", "nonsense"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_gpu_scripts_name_files_that_exist():
    """The GPU scripts run on a lent machine a few times a month: a test moved or renamed
    here must not turn their check into 'file not found' there (it did once)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    named = set()
    for script in ("bench/gpu_check.sh", "bench/gpu_session.sh", "bench/gpu_ab.sh"):
        text = (root / script).read_text()
        named |= set(re.findall(r"(?<![\w/])((?:tests|bench|training)/[\w/.-]+\.(?:py|sh))",
                                text))
    assert "tests/kernels/test_kernels.py" in named and "bench/gpu_env.sh" in named
    assert "bench/recipe_args.py" in named
    assert "training/demo-v7-order/scripts/pair_order.py" in named
    assert [p for p in sorted(named) if not (root / p).exists()] == []


def test_recipe_args_turn_a_runs_options_into_train_flags():
    """What the GPU scripts resume or repeat: the stored options as `train` flags, parsed
    back to the same values by the train command's parser."""
    import importlib.util
    from pathlib import Path

    from pomstream.cli import build_parser

    path = Path(__file__).resolve().parents[1] / "bench" / "recipe_args.py"
    spec = importlib.util.spec_from_file_location("recipe_args", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stored = {"batch": 16, "lr": 0.001, "image_steps": 3665, "t_mean": 0.3, "warmup": None,
              "context_loss": False, "out": "runs/x", "ema": 0.999}
    flags = " ".join(mod.recipe_flags(stored)).split()
    args = build_parser().parse_args(["train", "--out", "o", *flags])
    assert (args.batch, args.lr, args.image_steps, args.t_mean) == (16, 0.001, 3665, 0.3)
    assert args.context_loss is False and args.warmup is None
    # the model config: what differs from the registry entry comes back as --set
    from pomstream.cli import config_overrides
    from pomstream.model.config import get_config

    cfg = get_config("pom-dit-demo", prompt_mixer=True, dim=96)
    flags = " ".join(mod.config_flags(cfg.to_json())).split()
    args = build_parser().parse_args(["train", "--out", "o", *flags])
    assert get_config("pom-dit-demo", **config_overrides(args.set)) == cfg
    assert mod.config_flags(get_config("pom-dit-demo").to_json()) == []


def test_kernel_benchmark_no_compile_skips_compile_variants(tmp_path):
    from pomstream.cli import main as cli

    out = tmp_path / "kernels.json"
    assert cli(["bench", "kernels", "--quick", "--compile-on-cpu", "--no-compile",
                "--sections", "frame_step", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["sections"]["frame_step"]["rows"]
    assert rows and all(r["compile_graph_reference_ms"] == "skipped: --no-compile"
                        for r in rows)
