#!/usr/bin/env bash
# Write the images' hashed lock files from pyproject.toml (docs/packaging.md,
# "What is pinned"):
#
#   requirements/operator.in, operator.lock   the operator image: the project's
#       dependencies without torch, plus the `operator` extra
#   requirements/trainer.in,  trainer.lock    the trainer image: the project's
#       dependencies, the `tensorboard` extra (the default logger's format) and
#       the build-system requirements (setuptools, wheel: the image builds volt
#       itself with --no-build-isolation)
#
# The .in files are derived from pyproject.toml by scripts/lock_inputs.py, never
# edited by hand; the .lock files pin every package, dependencies included, with
# the SHA-256 of each of its files on PyPI. The images install them with
# `pip install --require-hashes`.
#
#   VOLT_PIP_COMPILE=<pip-compile> scripts/lock-image-requirements.sh [--upgrade]
#
# (`make lock` runs it with pip-tools from its own environment.) Without --upgrade,
# pins that still satisfy pyproject.toml are kept; --upgrade takes the newest.
# The locks are for the images' platform: CPython 3.11 on Linux x86_64 (Debian
# bookworm's python3); run it there.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
pip_compile="${VOLT_PIP_COMPILE:-pip-compile}"  # not PIP_*: pip reads those as its options
out="$repo/requirements"
mkdir -p "$out"

python3 "$repo/scripts/lock_inputs.py" "$repo/pyproject.toml" "$out"

for image in operator trainer; do
    echo ">> pip-compile requirements/$image.in -> requirements/$image.lock"
    # Relative paths, so the "via -r" comments do not name this machine's checkout.
    (cd "$repo" && CUSTOM_COMPILE_COMMAND="make lock" "$pip_compile" --quiet --generate-hashes \
        --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links "$@" \
        --output-file "requirements/$image.lock" "requirements/$image.in")
done
