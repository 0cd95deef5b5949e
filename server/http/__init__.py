"""The HTTP and WebSocket API (FastAPI). Handlers validate, call the store, shape answers.

    app.py          create_app: routers, middleware, error handlers, the runtime
    errors.py       OpenAI-shaped errors (4xx for bad input, 503 when Redis is down)
    deps.py         auth, owners, rate limits and slots (Annotated dependencies)
    validation.py   prompt / seed / size / seconds / ids, for HTTP and WebSocket alike
    bodies.py       JSON and form bodies, and their OpenAPI description
    middleware.py   request body limits (413)
    videos.py       OpenAI's videos API (/v1/videos...)
    stream.py       WS /v1/videos/{id}/stream: a video's fragments live
    live.py         WS /v1/sessions: live sessions steered by their viewer
    follow.py       the one frame-stream follower both WebSockets use
    ops.py          /healthz, /readyz, /metrics, the page, GET /v1/models

This package never imports torch or the engine's worker: ``pomstream api`` runs without
them (``tests/server/http/test_no_torch.py``).
"""
