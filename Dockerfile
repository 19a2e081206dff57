# syntax=docker/dockerfile:1
# DeepOpt API and worker image: one image, the command picks the role (see docker-compose.yml).
#   docker build -t deepopt .                                  # CPU torch
#   docker build -t deepopt:cuda --build-arg TORCH_CUDA=cu128 . # CUDA 12.8 torch (for the gpu worker)
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
# `cpu`, or a CUDA tag of the PyTorch wheel index (cu126, cu128, ...); TORCH_INDEX may name another index.
ARG TORCH_CUDA=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_CUDA}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index: the project's `torch` requirement is then already met.
RUN pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY clients/python clients/python
RUN pip install ./clients/python
COPY pyproject.toml README.md alembic.ini openapi.json ./
COPY app app
COPY worker worker
COPY deepopt_core deepopt_core
COPY migrations migrations
# onnx2torch without its torchvision requirement (see ONNX2TORCH_VERSION in the Makefile)
RUN pip install . && pip install --no-deps "onnx2torch==1.5.15" \
    && python -c "import app.main, worker.tasks, deepopt_client; from deepopt_core.formats import onnx_torch; onnx_torch.load_converter()"

FROM python:${PYTHON_VERSION}-slim
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin deepopt \
    && mkdir -p /data && chown deepopt /data
COPY --from=build /opt/venv /opt/venv
COPY --chown=deepopt alembic.ini /srv/deepopt/alembic.ini
COPY --chown=deepopt migrations /srv/deepopt/migrations
ENV PATH=/opt/venv/bin:$PATH DEEPOPT_DATA_DIR=/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
WORKDIR /srv/deepopt
USER deepopt
EXPOSE 8000
# The API's liveness; the compose file gives workers their own check (`python -m worker.presence`).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["python", "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
