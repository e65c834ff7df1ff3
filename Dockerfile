# One image for every bulkscore service (api, worker, migrate); compose picks the command.
#
#   docker build -t bulkscore .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t bulkscore:cpu .
FROM python:3.11-slim

# HF_HOME: model downloads land in a volume (see docker-compose.yml), not in a layer.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/var/cache/huggingface

WORKDIR /app

# torch first and alone: it is by far the largest download, so this layer stays cached while
# the code changes. Same pin as pyproject.toml (a test checks they agree). The default index
# gives PyPI's Linux wheel, which bundles CUDA (what GPU workers need); pass TORCH_INDEX_URL
# (e.g. the CPU index above) for a smaller CPU-only image.
ARG TORCH_INDEX_URL=
RUN pip install "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}

COPY pyproject.toml README.md alembic.ini ./
COPY core ./core
COPY engine ./engine
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
RUN pip install -e ".[worker,keras]"

# Never run as root: a Celery worker warns about it, and nothing here needs it.
RUN useradd --create-home --uid 1000 bulkscore \
    && mkdir -p "$HF_HOME" && chown bulkscore "$HF_HOME"
USER bulkscore

EXPOSE 8000
CMD ["bulkscore", "--help"]
