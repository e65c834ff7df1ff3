"""Names vulture cannot see being used: read by a framework, or an API for tests and tools.

Not imported or run by anything; ``vulture`` (configured in ``pyproject.toml``) reads this
file as code that uses these names. Add a name only with the reason it is used.
"""

# ruff: noqa: B018, F821

# pydantic reads these class attributes and fields (settings, schemas, dataclass fields).
_.model_config
_.evaluation  # api/training_schemas.py: a response field
_.worker_live  # api/schemas.py: QueueInfo, a response field
_.requeued  # api/schemas.py: RequeuedJobOut, a response field
_.loc  # api/problems.py: FieldError, a documented member of a problem's errors
_.head_sha256  # core/models/trained.py: a stored column, shown by `models show`
_.window_start  # core/schedules/runs.py: a column of the run view
_.JSONL  # core/schedules/config.py: an enum member, chosen by value from the models file
_.PARQUET  # core/schedules/config.py: an enum member, chosen by value from the models file

# Celery bootsteps and Prometheus collectors: the framework reads and calls these.
_.requires
_.collect
_.beat_schedule

# Attributes set on library objects (rich table columns, ONNX Runtime and Pillow options).
_.no_wrap
_.overflow
_.intra_op_num_threads
_.inter_op_num_threads
_.LOAD_TRUNCATED_IMAGES
_.closed  # core/jobs/parquet_export.py: read by pyarrow's PythonFile on its sink

# Public helpers the tests and bench/ use (one engine per process, settings re-read).
_.reset_settings_cache
_.dispose_engines
_.score_items  # engine/scoring.py: the one-job form of score_jobs
_.write_results  # core/jobs/results.py: the one-job form of write_job_results
_.get_run  # core/schedules/runs.py: one run by id
_.first_token_only  # engine/runners/transformers_text.py: whether the pruning applied
