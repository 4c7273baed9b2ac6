# The critique-sidecar image the Kubernetes manifests run (critique-sidecar:0.1.0):
#   docker build -t critique-sidecar:0.1.0 .
# Stage 1 fetches the dependencies exactly as requirements.lock pins them (every file checked
# against its hash: the same lock `make install` uses) and builds the project's wheel; stage 2
# installs only those wheels into a virtualenv and runs as an unprivileged user. The base is
# pinned to an exact tag; pin it by digest too (python:3.11.11-slim-bookworm@sha256:...) once
# your registry mirror has it. tests/unit/test_image.py checks the pins, the user and the entrypoint, and
# runs the entrypoint from a fresh virtualenv with the built wheel.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY requirements.lock ./
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 critique \
 && useradd --system --uid 10001 --gid critique --home-dir /var/lib/critique --shell /usr/sbin/nologin critique \
 && install -d -o critique -g critique -m 0700 /var/lib/critique
COPY --from=build /wheels /wheels
RUN python -m venv /opt/critique-sidecar \
 && /opt/critique-sidecar/bin/pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
 && rm -rf /wheels
ENV PATH=/opt/critique-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    CRITIQUE_JOURNAL_PATH=/var/lib/critique/journal.jsonl
# The settlement journal lives here: mount a persistent volume (deploy/kubernetes-statefulset).
WORKDIR /var/lib/critique
USER 10001:10001
EXPOSE 9001 9002
# No HEALTHCHECK: Kubernetes ignores it and probes the process's own gRPC health service
# (deploy/kubernetes/deployment.yaml: liveness on "liveness", readiness on ""), and a check
# run inside the container would need the listener's client certificate once mTLS is on.
# Under plain Docker, probe the same service from outside (grpc_health_probe -addr=:9001).
ENTRYPOINT ["critique-sidecar"]
CMD ["serve"]
