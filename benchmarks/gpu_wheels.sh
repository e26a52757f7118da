#!/usr/bin/env bash
# Fill a folder with the wheels benchmarks/gpu_check.py installs on an air-gapped GPU host: run
# it where the package index is reachable, for the host's Python, then copy the folder over.
#   bash benchmarks/gpu_wheels.sh wheels/ 3.12
# torch is not included: the check uses the host's own CUDA build (several GB, matched to its
# driver). onnxruntime-gpu 1.31 is built for CUDA 13; pick an older one for a CUDA 12 host.
set -euo pipefail
out=${1:?usage: gpu_wheels.sh DIR [PYTHON_VERSION] [ONNXRUNTIME_GPU_SPEC]}
python_version=${2:-3.12}
ort_spec=${3:-onnxruntime-gpu==1.31.*}
mkdir -p "$out"
python3 -m pip download --dest "$out" --only-binary=:all: --python-version "$python_version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "$ort_spec" "onnx>=1.16" "onnxscript>=0.3" "albumentations>=2.0,<3" huggingface_hub pyyaml \
    "safetensors>=0.4" "opencv-python-headless>=4.9" "simplejpeg>=1.8" "pandas>=2.0" \
    "typer>=0.12" "rich>=13" "tqdm>=4.66" "scikit-learn>=1.4" "matplotlib>=3.8" \
    "bentoml>=1.4,<1.5" "python-multipart>=0.0.9" "aiohttp>=3.9" "httpx>=0.27" "psutil>=5.9" \
    "setuptools>=68"
# timm alone, without its torch and torchvision (gpu_check.py installs it with --no-deps)
python3 -m pip download --dest "$out" --no-deps --only-binary=:all: --python-version "$python_version" \
    "timm>=1.0,<2"
echo "wheels for Python $python_version in $out: $(ls "$out" | wc -l) files"
