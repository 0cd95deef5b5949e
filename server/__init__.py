"""The serving side: video encoding now; API, engine, workers and queue to come."""
