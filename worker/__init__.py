"""The worker side: Celery app, tasks, and the runners that hold the models."""
