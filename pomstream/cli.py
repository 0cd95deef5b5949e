"""The ``pomstream`` command line: generate, train, evaluate, bench, serve, api, worker."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path


def _gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo",
                   help="'demo' (bundled), a .safetensors file, a run folder or a registry size")
    p.add_argument("--steps", type=int, default=None, help="sampling steps per frame")
    p.add_argument("--first-steps", dest="first_steps", type=int, default=None,
                   help="sampling steps of frame 0 (0: --steps)")
    p.add_argument("--sampler", choices=["euler", "heun"], default=None)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--first-guidance", dest="first_guidance", type=float, default=None,
                   help="guidance scale of frame 0 (default: the card's, else --guidance)")
    p.add_argument("--layers", choices=["joint", "digits"], default=None,
                   help="digits: one stream per named digit, laid over each other "
                        "(default: the card's, else joint)")
    p.add_argument("--context-noise", type=float, default=None,
                   help="noise level at which finished frames enter the state")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")


def _gen_params(args) -> dict:
    from pomstream.model.files import generation_params

    return generation_params(args.model, args)


def _load_generator(args):
    import torch

    from pomstream.model import StreamGenerator, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return StreamGenerator(load_model(args.model, device=args.device))


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from pomstream.media.mp4 import Mp4Writer

    if args.frames < 1:
        raise ValueError("--frames must be at least 1")
    gen = _load_generator(args)
    session = gen.session(args.prompt, seed=args.seed, **_gen_params(args))
    size, fps = gen.cfg.frame_size, args.fps or gen.cfg.fps
    t0 = time.perf_counter()
    with Mp4Writer(args.output, size, size, fps) as writer:
        for _ in tqdm(range(args.frames), desc="generate", unit="frame"):
            writer.write(session.next_frame())
    dt = time.perf_counter() - t0
    print(f"wrote {args.output}: {args.frames} frames of {size}x{size} at {fps} fps "
          f"({args.frames / dt:.1f} frames/s)")
    return 0


def _autoencoder_main(rest: list[str]) -> int:
    from pomstream.model.autoencoder import main as autoencoder_main

    autoencoder_main(rest)
    return 0


def config_overrides(items: list[str] | None) -> dict:
    """``--set key=value`` items as config overrides: numbers, true/false and lists are
    JSON, anything else a plain string."""
    overrides = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def cmd_train(args) -> int:
    import torch

    from pomstream.model.config import get_config
    from pomstream.model.train import TrainArgs, train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_config(args.model, **config_overrides(args.set))
    known = {f.name for f in fields(TrainArgs)}
    targs = TrainArgs(**{k: v for k, v in vars(args).items() if k in known and v is not None})
    evaluate_fn = None
    if targs.eval_videos:
        from pomstream.model.evaluate import evaluate_generator
        from pomstream.model.streaming import StreamGenerator

        def evaluate_fn(ema, n):
            return evaluate_generator(StreamGenerator(ema), n, frames=args.eval_frames,
                                      windows=((0, 20),), progress=False)
    path = train(cfg, targs, evaluate_fn)
    print(f"model written to {path}")
    return 0


def cmd_evaluate(args) -> int:
    from pomstream.model import evaluate as ev

    if args.input:
        if not args.prompt:
            raise ValueError("--input needs --prompt (the digits the video should show)")
        scores = ev.evaluate_file(args.input, args.prompt)
    else:
        gen, params = _load_generator(args), _gen_params(args)
        last = args.frames
        windows = ((0, min(20, last)),) + (((last - 20, last),) if last > 40 else ())
        scores = ev.evaluate_generator(gen, args.videos, frames=last, windows=windows,
                                       seed=args.seed, by_digits_report=True, **params)
        scores["reference"] = ev.reference_scores(videos=args.videos, seed=args.seed)
        scores.update(model=str(args.model), params=params)  # what made these numbers
    text = json.dumps(scores, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def cmd_probe(args) -> int:
    from pomstream.model.probes import run_probes

    gen, params = _load_generator(args), _gen_params(args)
    start = time.perf_counter()
    scores = run_probes(gen, seeds=args.seeds, stream_videos=args.streams,
                        stream_frames=args.stream_frames, pairs=args.pairs, **params)
    scores.update(model=str(args.model), params=params)
    scores["total_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(scores, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


BENCHMARKS = {  # pomstream bench [NAME] ...: module under bench/ with a main(argv)
    "frame-step": "pomstream.bench.frame_step",
    "kernels": "pomstream.bench.kernels",
    "streams": "pomstream.bench.streams",
    "context-use": "pomstream.bench.context_use",
}


def cmd_bench(argv: list[str]) -> int:
    """``pomstream bench [frame-step|kernels|streams|context-use] [options]``; the frame-step
    benchmark when no name is given."""
    import importlib

    name = "frame-step"
    if argv and not argv[0].startswith("-"):
        name, argv = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"pomstream bench: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[name]).main(argv)


_SERVER_OPTIONS = {  # flag -> (Settings field, type, help); unset flags keep env/defaults
    "--host": ("host", str, "address to listen on (default 127.0.0.1)"),
    "--port": ("port", int, "port to listen on (default 8000)"),
    "--redis-url": ("redis_url", str, "Redis URL (serve: default in-process backend)"),
    "--prefix": ("redis_prefix", str, "Redis key prefix"),
    "--model": ("model", str, "'demo' (bundled), a .safetensors file or a registry size"),
    "--device": ("device", str, "torch device for the worker"),
    "--dtype": ("dtype", str, "weights' dtype: auto (bfloat16 on CUDA), float32, bfloat16"),
    "--threads": ("threads", int, "torch CPU threads (0: torch's default)"),
    "--steps": ("steps", int, "sampling steps per frame"),
    "--first-steps": ("first_steps", int, "sampling steps of a video's frame 0 (0: --steps)"),
    "--guidance": ("guidance", float, "classifier-free guidance scale"),
    "--first-guidance": ("first_guidance", float, "guidance scale of a video's frame 0"),
    "--layers": ("layers", str, "joint, or digits: one stream per named digit, laid over "
                 "each other"),
    "--storage-dir": ("storage_dir", str, "directory for finished videos"),
    "--max-sessions": ("max_sessions", int, "batch slots: jobs a worker steps together"),
    "--max-held": ("max_held", int, "jobs a worker holds, time-sliced (0: 4 x max-sessions)"),
    "--min-session-fps": ("min_session_fps", float,
                          "frame rate each held job must keep (0: no floor)"),
    "--snapshot-every": ("snapshot_every", int, "frames between snapshots (= keyframes)"),
    "--claim-idle-ms": ("claim_idle_ms", int, "idle time after which a job is reclaimed"),
    "--session-window": ("session_window", int, "frames a live session may run ahead"),
    "--worker-id": ("worker_id", str, "worker (consumer) name"),
    "--metrics-port": ("metrics_port", int, "worker: serve Prometheus /metrics on this port"),
}


def _server_args(p: argparse.ArgumentParser, roles: str) -> None:
    for flag, (dest, kind, text) in _SERVER_OPTIONS.items():
        if roles == "worker" and dest == "port":
            continue
        if roles != "worker" and dest == "metrics_port":
            continue
        p.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    if roles != "worker":
        p.add_argument("--api-key", dest="api_keys", action="append", default=None,
                       help="accepted Bearer key (repeat for several; env POMSTREAM_API_KEYS)")


def _settings(args):
    from pomstream.server.settings import Settings

    given = {dest: getattr(args, dest, None) for dest, *_ in _SERVER_OPTIONS.values()}
    given["api_keys"] = getattr(args, "api_keys", None)
    return Settings(**{k: v for k, v in given.items() if v is not None})


def _server_main(args, run) -> int:
    from pomstream.server.logs import configure_logging

    configure_logging()
    return run(_settings(args))


def cmd_serve(args) -> int:
    from pomstream.server.roles import run_server

    return _server_main(args, lambda s: run_server(s, with_worker=True))


def cmd_api(args) -> int:
    from pomstream.server.roles import run_server

    return _server_main(args, lambda s: run_server(s, with_worker=False))


def cmd_worker(args) -> int:
    from pomstream.server.roles import run_worker

    return _server_main(args, run_worker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pomstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate a video to an MP4 file")
    p.add_argument("--prompt", required=True, help='e.g. "digits 3 and 7"')
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=0, help="frame rate (0: the model's)")
    p.add_argument("--output", "-o", default="out.mp4")
    _gen_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train a video DiT on Moving-digits clips")
    p.add_argument("--model", default="pom-dit-demo", help="registry size to train")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set depth=6")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--image-every", dest="image_every", type=int,
                   help="every N-th step trains on single frames instead of clips")
    p.add_argument("--image-steps", dest="image_steps", type=int,
                   help="the first N steps train on single frames only (phase 1)")
    p.add_argument("--image-batch", dest="image_batch", type=int,
                   help="single frames per image step (default: batch x clip frames)")
    p.add_argument("--restore", type=float,
                   help="fraction of clips whose prompt must restore a lost/new digit")
    p.add_argument("--t-mean", dest="t_mean", type=float,
                   help="noise levels: logit-normal location (higher: noisier)")
    p.add_argument("--t-std", dest="t_std", type=float, help="noise levels: logit-normal scale")
    p.add_argument("--t-uniform", dest="t_uniform", type=float,
                   help="noise levels: fraction drawn uniformly on [0, 1]")
    p.add_argument("--context-loss", dest="context_loss", action=argparse.BooleanOptionalAction,
                   default=None, help="train on the near-clean context frames too")
    p.add_argument("--seed", type=int)
    p.add_argument("--ckpt-every", dest="ckpt_every", type=int)
    p.add_argument("--keep-every", dest="keep_every", type=int)
    p.add_argument("--log-every", dest="log_every", type=int)
    p.add_argument("--eval-every", dest="eval_every", type=int)
    p.add_argument("--eval-videos", dest="eval_videos", type=int)
    p.add_argument("--eval-frames", dest="eval_frames", type=int, default=20)
    p.add_argument("--max-minutes", dest="max_minutes", type=float)
    p.add_argument("--device")
    p.add_argument("--resume", action="store_true", default=None)
    p.add_argument("--init-from", dest="init_from", metavar="PATH",
                   help="start from another run's train_state.pt or a .safetensors model "
                        "(new branches of this config start switched off)")
    p.add_argument("--new-lr-mult", dest="new_lr_mult", type=float,
                   help="learning-rate factor of the tensors the --init-from model lacked")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-autoencoder", add_help=False,
                       help="train the conv-f4 latent autoencoder (train-autoencoder --help)")
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("probe", help="quick checks of a model: first frames, two digits, "
                       "recovery from a blank past (and streams)")
    p.add_argument("--seeds", type=int, default=8, help="seeds per single-digit prompt")
    p.add_argument("--pairs", type=int, default=16,
                   help="two-digit prompts (two seeds each) of the two-digit test")
    p.add_argument("--streams", type=int, default=0, help="also score this many streams")
    p.add_argument("--stream-frames", dest="stream_frames", type=int, default=300)
    p.add_argument("--json", help="also write the scores to this file")
    _gen_args(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("evaluate", help="score a model's videos (or one MP4) objectively")
    p.add_argument("--input", help="score this video file instead of generating")
    p.add_argument("--prompt", help="the prompt of --input")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the scores to this file")
    _gen_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="benchmarks: bench [frame-step|kernels|streams|context-use] "
                                     "[options] (see bench/*.py --help)")
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("serve", help="API + worker in one process (no Redis needed)")
    _server_args(p, "serve")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="the HTTP/WebSocket API alone (needs --redis-url)")
    _server_args(p, "api")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="a generation worker (needs --redis-url)")
    _server_args(p, "worker")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parsers (argparse's REMAINDER drops leading options)
        return cmd_bench(argv[1:])
    if argv[:1] == ["train-autoencoder"]:
        return _autoencoder_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"pomstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
