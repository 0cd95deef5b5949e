"""A Worker for this process's settings: loads the model (torch) and its generator."""

from __future__ import annotations

from pomstream.server.engine.worker import Worker
from pomstream.server.settings import Settings, SettingsError
from pomstream.server.storage import LocalStorage
from pomstream.server.store import JobQueue


def build_worker(settings: Settings, queue: JobQueue, storage: LocalStorage) -> Worker:
    import torch

    from pomstream.model import StreamGenerator, load_model

    if settings.threads:
        torch.set_num_threads(settings.threads)
    dtype = settings.dtype
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(settings.device).type == "cuda" else "float32"
    model = load_model(settings.model, device=settings.device, dtype=getattr(torch, dtype))
    generator = StreamGenerator(model, graphs=settings.cuda_graphs and model.pos.is_cuda)
    params = settings.generation_params()
    try:  # refuse at start what this model cannot sample with, not on every job
        generator.session("", **params)
    except ValueError as exc:
        raise SettingsError(f"cannot sample {settings.model!r} with {params}: {exc}") from exc
    return Worker(queue, generator, storage, worker_id=settings.worker_id,
                  max_sessions=settings.max_sessions, snapshot_every=settings.snapshot_every,
                  qp=settings.encoder_qp, encode_threads=settings.encode_threads,
                  video_ttl_s=settings.video_ttl_s, params=params,
                  session_window=settings.session_window,
                  viewer_timeout_s=settings.viewer_timeout_s,
                  detached_ttl_s=settings.detached_ttl_s,
                  max_active_per_key=settings.max_active_per_key,
                  max_held=settings.max_held or None,
                  min_session_fps=settings.min_session_fps,
                  max_snapshot_bytes=settings.max_snapshot_bytes_per_key or None)
