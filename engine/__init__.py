"""The scoring engine: runners that hold the models, batching, and the one scoring path.

Used by the Celery worker (``worker/``) and by the CLI's in-process commands."""
