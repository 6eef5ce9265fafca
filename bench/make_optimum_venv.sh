#!/usr/bin/env bash
# Optimum's onnxruntime integration (optimum-onnx) pins transformers 4.x, so it gets a virtualenv of its own,
# bench/.venv-optimum (git-ignored), for bench/predict_vs_hf.py's two Optimum rows. The CPU build of torch first,
# as in README, so that nothing pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv-optimum
.venv-optimum/bin/pip install -q torch==2.13.0
.venv-optimum/bin/pip install -q "optimum-onnx[onnxruntime]"
.venv-optimum/bin/python -c "import optimum.onnxruntime, transformers; print('optimum ready, transformers', transformers.__version__)"
