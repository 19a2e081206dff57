# DeepOpt API and worker image (CPU torch by default; TORCH_INDEX selects another torch build).
FROM python:3.11-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY worker worker
COPY deepopt_core deepopt_core
COPY migrations migrations
RUN pip install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 deepopt
COPY --from=build /opt/venv /opt/venv
COPY --chown=deepopt alembic.ini /srv/deepopt/alembic.ini
COPY --chown=deepopt migrations /srv/deepopt/migrations
ENV PATH=/opt/venv/bin:$PATH DEEPOPT_DATA_DIR=/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
WORKDIR /srv/deepopt
RUN mkdir -p /data && chown deepopt /data
USER deepopt
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
