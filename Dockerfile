# syntax=docker/dockerfile:1
# One image for every agentmesh service: the Deployment's args pick which one runs
# (`services.gateway`, `services.agent`, `services.rag`). Built with `docker build -t agentmesh .`.

# --- build: pinned dependencies into a venv, generated code from the protos --------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml ./
COPY tools/requirements.py tools/
RUN python -m venv /opt/venv \
 && python tools/requirements.py > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt \
 # protoc only in this stage, outside the venv that ships.
 && pip install "$(python tools/requirements.py dev | grep '^grpcio-tools==')"

COPY protos/ protos/
# As the Makefile's gen target: vendored contracts each under their own include root.
RUN mkdir gen \
 && python -m grpc_tools.protoc -Iprotos -Iprotos/third_party/googleapis --python_out=gen --grpc_python_out=gen \
      $(find protos/agentmesh -name '*.proto' | sort) \
 && python -m grpc_tools.protoc -Iprotos -Iprotos/third_party/googleapis -Iprotos/third_party/a2a \
      --include_imports --include_source_info --descriptor_set_out=gen/agentmesh.pb \
      $(find protos/agentmesh -name '*.proto' | sort) google/rpc/status.proto google/rpc/error_details.proto a2a.proto \
 && find gen/agentmesh -type d -exec touch {}/__init__.py \;

COPY runtime/ runtime/
COPY rpcstatus/ rpcstatus/
COPY bounded/ bounded/
COPY interceptors/ interceptors/
COPY services/ services/
# Bytecode now: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app /opt/venv

# --- run: no compilers, no pip cache, no root --------------------------------------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin agentmesh
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["python", "-m"]
CMD ["services.gateway"]
