"""Shared core of bulkscore: settings, tables, job lifecycle and the model registry.

Nothing in this package imports FastAPI, Celery or an ML framework, so both the API and the
workers can import it cheaply.
"""
