# The volt operator image: kopf + volt_operator on a slim Python, no torch.
#
#   docker build --network host --build-arg BASE_IMAGE=<debian with python3 and python3-venv> \
#       -t volt-operator:0.1.0 .
#
# No registry is assumed: BASE_IMAGE is any Debian/Ubuntu image with python3 (>= 3.11: the build reads pyproject.toml with tomllib)
# and its venv module (scripts/build-base-image.sh builds one with debootstrap;
# scripts/build-images.sh builds both volt images with the right arguments).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

# PEM certificates that pip must trust besides the public ones, for builds behind a
# TLS-intercepting proxy. Written to /tmp for the pip step only, never kept.
ARG PIP_EXTRA_CA=""

ENV VIRTUAL_ENV=/opt/volt \
    PATH=/opt/volt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python3 -m venv /opt/volt \
 && useradd --system --uid 65532 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin volt

# Dependencies first, in their own layer: rebuilt only when the lock changes. The
# operator needs the project's dependencies and its `operator` extra but not torch;
# requirements/operator.lock pins all of them, dependencies included, each with the
# SHA-256 of its files (`make lock` writes it from pyproject.toml; docs/packaging.md).
# --require-hashes: a file whose hash is not in the lock, or a package the lock does
# not pin, fails the build.
COPY requirements/operator.lock /src/operator.lock
RUN if [ -n "$PIP_EXTRA_CA" ]; then \
        { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$PIP_EXTRA_CA"; } > /tmp/pip-ca.pem; \
        export PIP_CERT=/tmp/pip-ca.pem; fi \
 && pip install --require-hashes -r /src/operator.lock \
 && rm -rf /tmp/pip-ca.pem /src

# The operator package only: it never imports the engine. Bytecode is compiled
# now because the root filesystem is read-only at run time.
COPY operator/volt_operator /opt/volt/operator/volt_operator
ENV PYTHONPATH=/opt/volt/operator
RUN python -m compileall -q /opt/volt/operator \
 && python -c "import volt_operator"

USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "volt_operator"]
