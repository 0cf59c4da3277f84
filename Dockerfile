# The volt operator image: kopf + volt_operator on a slim Python, no torch.
#
#   docker build --build-arg BASE_IMAGE=<debian with python3 and python3-venv> -t volt-operator:0.1.0 .
#
# No registry is assumed: BASE_IMAGE is any Debian/Ubuntu image with python3 (>= 3.10)
# and the venv module (scripts/build-base-image.sh builds one with debootstrap).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

ENV VIRTUAL_ENV=/opt/volt \
    PATH=/opt/volt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python3 -m venv /opt/volt \
 && useradd --system --uid 65532 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin volt

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml
# changes. The operator needs the project's dependencies and the `operator` extra,
# but not torch (the engine's), so the list is read from pyproject.toml.
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join([d for d in p['dependencies'] if not d.startswith('torch')] + p['optional-dependencies']['operator']))" \
        > /src/operator-requirements.txt \
 && pip install -r /src/operator-requirements.txt

# The operator package only (the engine is not imported by the operator). Bytecode is
# compiled now because the root filesystem is read-only at run time.
COPY operator/volt_operator /opt/volt/operator/volt_operator
RUN python -m compileall -q /opt/volt/operator
ENV PYTHONPATH=/opt/volt/operator

USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "volt_operator"]
