"""The command line, end to end: a real MP4 that PyAV decodes."""

import subprocess
import sys

from pomstream.media.mp4 import read_frames
from pomstream.model import save_model
from tests.support.models import randomized_model


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pomstream", *args], capture_output=True,
                          text=True, timeout=300)


def test_generate_writes_decodable_mp4(tmp_path):
    path = save_model(randomized_model().float(), tmp_path / "tiny.safetensors")
    out = tmp_path / "v.mp4"
    res = run_cli("generate", "--model", str(path), "--prompt", "digits 3 and 7",
                  "--frames", "9", "--steps", "2", "--output", str(out))
    assert res.returncode == 0, res.stderr
    frames = read_frames(out)
    assert frames.shape == (9, 16, 16, 3)
    assert "9 frames" in res.stdout


def test_generate_with_bundled_demo_model(tmp_path):
    out = tmp_path / "demo.mp4"
    res = run_cli("generate", "--prompt", "digit 5", "--frames", "3", "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert read_frames(out).shape == (3, 64, 64, 3)


def test_generate_reports_bad_input(tmp_path):
    res = run_cli("generate", "--prompt", "x" * 400, "--frames", "2",
                  "--output", str(tmp_path / "x.mp4"))
    assert res.returncode == 2 and "at most" in res.stderr
    assert not (tmp_path / "x.mp4").exists() and not list(tmp_path.glob("*.part"))
    res = run_cli("generate", "--prompt", "digit 1", "--model", str(tmp_path / "none.safetensors"))
    assert res.returncode == 2 and "no model file" in res.stderr


def test_train_rejects_unknown_config_field(tmp_path):
    res = run_cli("train", "--model", "pom-dit-tiny", "--set", "widht=3", "--out", str(tmp_path))
    assert res.returncode == 2 and "unknown model config fields" in res.stderr


def test_bench_takes_its_own_options(tmp_path, capsys):
    from pomstream.cli import main as cli_main

    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--model", "pom-dit-tiny", "--frames", "20", "--threads", "1",
                     "--json", str(out)]) == 0
    assert "pom-dit-tiny x1" in capsys.readouterr().out and out.exists()


def test_a_digit_model_refuses_other_prompts_with_an_example(tmp_path):
    path = save_model(randomized_model(prompt_encoder="digits", cond_norm=True).float(),
                      tmp_path / "digits.safetensors")
    card = (tmp_path / "digits.json").read_text()
    assert '"kind": "digits"' in card and "digits 3 and 7" in card  # the card says what it reads
    res = run_cli("generate", "--model", str(path), "--prompt", "a cat", "--frames", "2",
                  "--output", str(tmp_path / "x.mp4"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "pomstream generate: error:" in res.stderr and "digits 3 and 7" in res.stderr


def test_evaluate_json_says_what_sampling_made_it(tmp_path):
    """The card's sampling, overridden flag by flag (frame 0's guidance too), and recorded."""
    import json

    from pomstream.model.files import generation_defaults

    out = tmp_path / "eval.json"
    res = run_cli("evaluate", "--videos", "2", "--frames", "2", "--steps", "1",
                  "--first-steps", "1", "--first-guidance", "2.5", "--layers", "digits",
                  "--threads", "1", "--json", str(out))
    assert res.returncode == 0, res.stderr
    scores = json.loads(out.read_text())
    assert scores["model"] == "demo" and scores["videos"] == 2
    assert scores["params"] == {**generation_defaults("demo"), "steps": 1, "first_steps": 1,
                                "first_guidance": 2.5, "layers": "digits"}
    assert 0.0 <= scores["window_0_2"]["prompt_accuracy"] <= 1.0
