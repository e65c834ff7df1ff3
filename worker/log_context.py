"""Every log record a chunk task emits carries its job and chunk ids (``core.logs``).

Set from Celery's task signals rather than inside the task, so that every line of a
delivery (claim, scoring, retries, the outcome) is tagged, whoever logs it.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from celery.signals import task_postrun, task_prerun

from core.logs import CHUNK, JOB_ID
from core.queues import SCORE_CHUNK_TASK

_TOKENS: dict[str, tuple[Token[str | None], Token[int | None]]] = {}


@task_prerun.connect
def _enter(task_id: str = "", task: Any = None, args: Any = None, **_kwargs: Any) -> None:
    if getattr(task, "name", None) != SCORE_CHUNK_TASK or not args or len(args) < 2:
        return
    job_id, chunk = args[0], args[1]
    _TOKENS[task_id] = (
        JOB_ID.set(str(job_id)),
        CHUNK.set(chunk if isinstance(chunk, int) else None),
    )


@task_postrun.connect
def _leave(task_id: str = "", **_kwargs: Any) -> None:
    tokens = _TOKENS.pop(task_id, None)
    if tokens is None:
        return
    job_token, chunk_token = tokens
    try:
        CHUNK.reset(chunk_token)
        JOB_ID.reset(job_token)
    except ValueError:  # a token from another thread's context: leave that one alone
        pass
