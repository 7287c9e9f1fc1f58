# syntax=docker/dockerfile:1
# tokensync operator image.
#
#   docker build -t tokensync:dev .
#
# Two stages: the build stage installs the package and its runtime dependencies (no test
# extras) into a virtualenv; the runtime stage copies only that virtualenv onto the same
# slim base, and runs as a non-root numeric user (so Kubernetes can verify runAsNonRoot)
# with a read-only root filesystem in mind (bytecode is compiled at build time; temporary
# files go to $TOKENSYNC_TMPDIR, a memory-backed emptyDir in deploy/).

# Pinned by version; bump deliberately (and rebuild for security updates).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/tokensync
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# Runtime dependencies only: `.` without the [test] extra.
RUN /opt/tokensync/bin/pip install . \
 && /opt/tokensync/bin/pip uninstall --yes pip setuptools \
 && /opt/tokensync/bin/python -m compileall -q /opt/tokensync/lib \
 && /opt/tokensync/bin/tokensync --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tokensync" \
      org.opencontainers.image.description="Kubernetes operator that keeps OAuth2 client-credentials tokens fresh in Secrets" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/tokensync /opt/tokensync
ENV PATH=/opt/tokensync/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENSYNC_TMPDIR=/tmp
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["tokensync"]
CMD ["run", "--all-namespaces"]
