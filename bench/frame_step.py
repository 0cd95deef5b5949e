"""Frame-step benchmark: time per generated frame against the frame index.

A PoM stream carries a state of constant size, so the time of a frame and the bytes of
state must not grow with the number of frames already made. This runs ``--sessions``
streams batched in one generator for ``--frames`` frames and reports the median time of
a frame step around frame 10 and around the last frame, with the state bytes per
session. Every frame step is a whole frame: ``steps`` sampler evaluations plus the pass
that folds the finished frame into the state.

    pomstream bench frame-step --model demo --frames 1000
    pomstream bench frame-step --model pom-dit-xl --device cuda --dtype bfloat16 --sessions 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from pomstream.bench.machine import describe, sync, write_json
from pomstream.model import StreamGenerator, load_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run(model_spec: str, frames: int, sessions: int, steps: int, device: str, dtype: str,
        window: int = 10, guidance: float = 1.0, prompt: str | None = None,
        layers: str = "joint") -> dict:
    model = load_model(model_spec, device=torch.device(device), dtype=DTYPES[dtype])
    result = run_model(model, frames, sessions, steps, window, guidance, prompt=prompt,
                       layers=layers)
    return {**result, "dtype": dtype}


def run_model(model, frames: int, sessions: int, steps: int, window: int = 10,
              guidance: float = 1.0, generator: StreamGenerator | None = None,
              prompt: str | None = None, layers: str = "joint") -> dict:
    """``sessions`` streams of ``model`` batched in one generator (or ``generator``) for
    ``frames`` frames: median frame-step times around frame 10 and over the last
    ``window`` frames, state and snapshot bytes. Each stream's prompt is ``prompt``, else
    a two-digit one; ``layers="digits"`` draws each named digit in its own stream."""
    dev = next(model.parameters()).device
    gen = generator or StreamGenerator(model)
    batch = [gen.session(prompt if prompt is not None else f"digits {i % 10} and {(3 * i) % 10}",
                         seed=i, steps=steps, guidance=guidance, layers=layers)
             for i in range(sessions)]
    times = []
    for _ in tqdm(range(frames), desc=f"{sessions} session(s)", unit="frame"):
        sync(dev)
        t0 = time.perf_counter()
        gen.step(batch)  # frames come back as uint8 on the host
        sync(dev)
        times.append(time.perf_counter() - t0)
    early = times[max(0, 10 - window // 2): 10 + window // 2]
    late = times[-window:]
    ms_early, ms_late = 1e3 * statistics.median(early), 1e3 * statistics.median(late)
    return {
        "model": model.cfg.name,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "tokens_per_frame": model.cfg.tokens_per_frame,
        "sessions": sessions,
        "prompts": sorted({s.prompt for s in batch}),
        "layers": layers,
        # network streams per session: one, or one per named digit with layers="digits"
        "streams_per_session": round(sum(len(getattr(s, "layers", [s])) for s in batch)
                                     / sessions, 3),
        "steps": steps,
        "guidance": guidance,
        "network_passes_per_frame": steps * (2 if guidance != 1.0 else 1) + 1,  # a stream's
        "frames": frames,
        "ms_per_frame_step_at_10": round(ms_early, 3),
        f"ms_per_frame_step_at_{frames}": round(ms_late, 3),
        "late_over_early": round(ms_late / ms_early, 3),
        "frames_per_s_total": round(sessions * 1e3 / ms_late, 2),
        "state_bytes_per_session": batch[0].state_bytes,
        "snapshot_bytes_per_session": len(batch[0].snapshot()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pomstream bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--sessions", type=int, nargs="+", default=[1])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--prompt", default=None,
                   help="every stream's prompt (default: a two-digit one per stream)")
    p.add_argument("--layers", choices=["joint", "digits"], default="joint",
                   help="digits: each named digit in its own stream, laid over each other")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.frames < 20:
        p.error("--frames must be at least 20 (frames 5-15 are the early window)")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run(args.model, args.frames, n, args.steps, args.device, args.dtype,
                   guidance=args.guidance, prompt=args.prompt, layers=args.layers)
               for n in args.sessions]
    out = {"benchmark": "frame_step", "machine": describe(torch.device(args.device)),
           "date": time.strftime("%Y-%m-%d"), "results": results}
    for r in results:
        print(f"{r['model']:>14} x{r['sessions']:<3} {r['ms_per_frame_step_at_10']:9.2f} ms/frame "
              f"at 10, {r[f'ms_per_frame_step_at_{args.frames}']:9.2f} at {args.frames} "
              f"({r['late_over_early']:.2f}x), {r['frames_per_s_total']:8.1f} frames/s, "
              f"{r['state_bytes_per_session']} state bytes/session")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
