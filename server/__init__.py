"""The serving side, in wings; each wing talks to the next through the store (Redis).

    settings.py   Settings (env / CLI) and ModelInfo (what the served model makes)
    roles.py      process roles: serve (API + worker), api, worker; their wiring
    http/         the API: FastAPI app, routes, WebSockets (torch-free)
    engine/       workers: take jobs, generate frames in batches, encode, write back
    store/        the only code that talks to Redis: queue, records, frames, limits
    storage.py    finished files (MP4, thumbnail, spritesheet) on disk
    metrics.py    Prometheus metrics
    logs.py       structured JSON logs
    static/       the viewer page

Request paths are drawn in ``docs/architecture.md``.
"""
