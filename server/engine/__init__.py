"""The engine: workers that take jobs from the store, generate frames in batches, encode
them and write them back.

    jobs.py       what a job is (videos, sessions), how it is produced, the engine's errors
    worker.py     the Worker: admit / step / retire / drain / heartbeat
    live.py       a live session's state inside a worker
    build.py      a Worker for the process's settings (loads the model: torch)

Only ``build.py`` and ``worker.py`` need torch; the API imports ``jobs.py`` alone.
"""
