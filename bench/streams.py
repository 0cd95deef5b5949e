"""Server benchmark: N concurrent live streams against a running pomstream server.

For each N (default 1, 8 and 32) it opens N WebSocket live sessions (``WS /v1/sessions``)
at once, reads every frame as it arrives for ``--seconds``, then stops them, and reports
frames/s per stream and in total (frames after the first, over the time from the first
to the end of the window), time to first frame (p50/p95, from the ``start`` message to
the first fragment) and the server's memory per session (peak resident memory during the
run minus before it, divided by N, when the server is a local process) next to the bytes
of PoM state a session carries. Each stream is stopped and its ``end`` awaited before the
next level starts.

Without ``--url`` it starts ``pomstream serve`` itself (in-process queue, the given model,
``--max-sessions`` batch slots: by default as many as the largest N; fewer slots than
streams measure time-slicing, with ``--max-held`` and ``--min-session-fps`` passed on) and
stops it at the end. Per level it also reports the slowest and fastest stream's frame rate
and their ratio (fairness), and streams refused with ``server_busy``. Against another
server, its ``POMSTREAM_MAX_ACTIVE_PER_KEY`` must allow the largest N for the key used.

    pomstream bench streams --streams 1 8 32 --seconds 20 --json bench/results/streams-cpu.json
    pomstream bench streams --streams 32 --max-sessions 8 --max-held 32 --min-session-fps 0.5
    pomstream bench streams --url http://gpu-box:8000 --api-key $KEY --streams 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pomstream.bench.machine import describe, write_json

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def _stream(url: str, headers: dict, index: int, seconds: float, started: asyncio.Event,
                  stop_at: list[float]) -> dict:
    """One viewer: start a session, read frames until the common deadline, stop it."""
    async with connect(url, additional_headers=headers, open_timeout=30,
                       max_size=2**24) as ws:
        await started.wait()
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "start", "prompt": f"digits {index % 10} and "
                                  f"{(index * 3 + 1) % 10}", "seed": index}))
        first, frames, session_id = None, 0, None
        while True:
            deadline = stop_at[0] if stop_at else t0 + seconds + 120
            timeout = deadline - time.perf_counter()
            if timeout <= 0:
                break
            try:
                message = await asyncio.wait_for(ws.recv(), timeout)
            except TimeoutError:
                break
            if isinstance(message, bytes):
                continue
            body = json.loads(message)
            if body["type"] == "session":
                session_id = body["session_id"]
            elif body["type"] == "frame":
                frames += 1
                if first is None:
                    first = time.perf_counter()
                    if not stop_at:
                        stop_at.append(first + seconds)  # the first frame starts the clock
            elif body["type"] == "error" and body.get("code") == "server_busy":
                return {"session_id": None, "ttff_s": None, "frames_after_first": 0,
                        "window_s": 0.0, "refused": True}
            elif body["type"] == "error":
                raise RuntimeError(f"stream {index}: {body}")
        await ws.send(json.dumps({"type": "stop"}))
        drain_until = time.perf_counter() + 60  # the session ends before the next level
        while time.perf_counter() < drain_until:
            try:
                message = await asyncio.wait_for(ws.recv(), drain_until - time.perf_counter())
            except (TimeoutError, ConnectionClosed):
                break
            if isinstance(message, str) and json.loads(message)["type"] == "end":
                break
        # frames after the first, over the time from the first to the deadline
        window = (stop_at[0] - first) if first is not None and stop_at else 0.0
        return {"session_id": session_id, "ttff_s": None if first is None else first - t0,
                "frames_after_first": max(0, frames - 1), "window_s": window}


async def _run_level(base: str, headers: dict, n: int, seconds: float) -> list[dict]:
    url = base.replace("http://", "ws://").replace("https://", "wss://") + "/v1/sessions"
    started, stop_at = asyncio.Event(), []
    tasks = [asyncio.create_task(_stream(url, headers, i, seconds, started, stop_at))
             for i in range(n)]
    await asyncio.sleep(0.5)  # every connection open before any session starts
    started.set()
    return await asyncio.gather(*tasks)


def run_level(base: str, headers: dict, n: int, seconds: float, pid: int | None) -> dict:
    before = _rss_bytes(pid) if pid else None
    peak = [0]

    async def watch_memory(done: asyncio.Event):
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes(pid) or 0)
            await asyncio.sleep(0.5)

    async def main():
        done = asyncio.Event()
        watcher = asyncio.create_task(watch_memory(done)) if pid else None
        try:
            return await _run_level(base, headers, n, seconds)
        finally:
            done.set()
            if watcher:
                await watcher

    streams = asyncio.run(main())
    ttff = [s["ttff_s"] for s in streams if s["ttff_s"] is not None]
    rates = [s["frames_after_first"] / s["window_s"] for s in streams if s["window_s"] > 0]
    result = {
        "streams": n,
        "seconds": seconds,
        "frames_per_s_per_stream_mean": round(statistics.mean(rates), 2) if rates else 0.0,
        "frames_per_s_per_stream_min": round(min(rates), 2) if rates else 0.0,
        "frames_per_s_per_stream_max": round(max(rates), 2) if rates else 0.0,
        "slowest_over_fastest": round(min(rates) / max(rates), 3) if rates and max(rates)
        else None,
        "frames_per_s_total": round(sum(rates), 2),
        "ttff_p50_s": round(_percentile(ttff, 0.5), 3) if ttff else None,
        "ttff_p95_s": round(_percentile(ttff, 0.95), 3) if ttff else None,
        "streams_without_frames": n - len(ttff),
        "streams_refused_busy": sum(1 for s in streams if s.get("refused")),
    }
    if before is not None and peak[0]:
        # everything the server holds per stream: state, activations of the batch,
        # buffered fragments (in-process queue), allocator slack
        result["server_rss_before_MiB"] = round(before / 2**20, 1)
        result["server_rss_peak_MiB"] = round(peak[0] / 2**20, 1)
        result["memory_per_session_KiB"] = round((peak[0] - before) / n / 1024, 1)
    return result


def _state_bytes(model: str) -> dict:
    """The PoM state a session of ``model`` carries, and its whole snapshot."""
    from pomstream.model import StreamGenerator, load_model
    from pomstream.server.settings import Settings

    gen = StreamGenerator(load_model(model))
    session = gen.session("digit 1", seed=0, **Settings(model=model).generation_params())
    return {"state_bytes_per_session": session.state_bytes,
            "snapshot_bytes_per_session": len(session.snapshot())}


def _start_server(args) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = Path(args.log or f"/tmp/pomstream-bench-{port}.log")
    cmd = [sys.executable, "-m", "pomstream", "serve", "--port", str(port), "--model",
           args.model, "--max-sessions", str(args.max_sessions or max(args.streams)),
           "--storage-dir", str(log.with_suffix("")) + "-videos"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.max_held:
        cmd += ["--max-held", str(args.max_held)]
    if args.min_session_fps is not None:
        cmd += ["--min-session-fps", str(args.min_session_fps)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "POMSTREAM_SESSION_WINDOW": "64",
                                 "POMSTREAM_RATE_LIMIT_PER_MINUTE": "100000",
                                 "POMSTREAM_MAX_ACTIVE_PER_KEY": str(4 * max(args.streams))})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base, log
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"the server did not become ready in 120 s; see {log}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pomstream.bench.streams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (default: start `pomstream serve`)")
    p.add_argument("--api-key", default=os.environ.get("POMSTREAM_API_KEY"))
    p.add_argument("--model", default="demo", help="model of the server started here")
    p.add_argument("--threads", type=int, default=0, help="torch threads of that server")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per level")
    p.add_argument("--max-sessions", type=int, default=0,
                   help="batch slots of the server started here (default: the largest N)")
    p.add_argument("--max-held", type=int, default=0,
                   help="jobs it holds, time-sliced (default: its own, 4 x slots)")
    p.add_argument("--min-session-fps", type=float, default=None,
                   help="frame rate each held session must keep (default: its own)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--log", help="server log file (default: /tmp/pomstream-bench-PORT.log)")
    args = p.parse_args(argv)
    if min(args.streams) < 1 or args.seconds <= 0:
        p.error("--streams must be >= 1 and --seconds > 0")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    proc = None
    if args.url:
        base, pid = args.url.rstrip("/"), None
    else:
        proc, base, log = _start_server(args)
        pid = proc.pid
        print(f"started pomstream serve at {base} (log: {log})")
    try:
        results = []
        for n in args.streams:
            r = run_level(base, headers, n, args.seconds, pid)
            results.append(r)
            mem = (f", {r['memory_per_session_KiB']:.0f} KiB/session"
                   if "memory_per_session_KiB" in r else "")
            print(f"{n:4d} streams: {r['frames_per_s_per_stream_mean']:7.2f} frames/s per "
                  f"stream (min {r['frames_per_s_per_stream_min']:.2f}), "
                  f"{r['frames_per_s_total']:8.2f} total, first frame p50 "
                  f"{r['ttff_p50_s']} s p95 {r['ttff_p95_s']} s{mem}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    out = {"benchmark": "streams", "server": "started here" if proc else base,
           "model": args.model, "max_sessions": args.max_sessions or None,
           "max_held": args.max_held or None, "min_session_fps": args.min_session_fps,
           "machine": describe(torch.device("cpu")) if proc else None,
           "date": time.strftime("%Y-%m-%d"), "results": results}
    if proc is not None:
        out.update(_state_bytes(args.model))
        print(f"PoM state per session: {out['state_bytes_per_session']} bytes "
              f"(snapshot {out['snapshot_bytes_per_session']} bytes)")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
