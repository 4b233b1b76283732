#!/usr/bin/env bash
# Issue 3's GPU figures in one command on a lent device machine (see docs/benchmarks.md):
# micro-batching on vs off at 64 concurrent requests through the server's runtimes on the GPU.
#
# The nvidia-h200 image has python3 3.12 with PyTorch (CUDA) and the CPU build of ONNX Runtime;
# nothing can be fetched there. Before the call, download here what the image lacks:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl pydantic pydantic-core annotated-types typing-inspection typing-extensions
# then run (device tool): bash benchmarks/device_gpu_check.sh   with carry [".whl"].
# Results land in $OUT (the device tool brings them back), else in bench-results/.
#
# DEVICE=cpu PYTHON=.venv/bin/python CLIENTS=4 SECONDS_EACH=2 bash benchmarks/device_gpu_check.sh
# is a CPU smoke run of the same steps.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
CLIENTS=${CLIENTS:-64}
SECONDS_EACH=${SECONDS_EACH:-10}
DEST=${OUT:-bench-results}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ] && ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --find-links .whl \
    pydantic pydantic-core annotated-types typing-inspection typing-extensions
fi
{
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  "$PYTHON" -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', \
torch.cuda.is_available(), '| onnxruntime', ort.__version__, ort.get_available_providers())"
} 2>&1 | tee "$DEST/device.txt"

status=0
# PyTorch on the GPU (TorchScript runtime): always possible on the image.
"$PYTHON" benchmarks/bench_batching.py --runtime torchscript --device "$DEVICE" \
  --clients "$CLIENTS" --seconds "$SECONDS_EACH" --max-batch 64 \
  --out "$DEST/batching-torchscript-$DEVICE.json" 2>&1 | tee "$DEST/torchscript.log" || status=1

# ONNX Runtime's CUDA execution provider: only where onnxruntime-gpu is installed.
if [ "$DEVICE" = cpu ] || "$PYTHON" -c "import onnxruntime as o, sys; \
sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  fp16=()
  "$PYTHON" -c "import onnxconverter_common" 2>/dev/null && fp16=(--fp16)
  "$PYTHON" benchmarks/bench_batching.py --device "$DEVICE" "${fp16[@]}" \
    --clients "$CLIENTS" --seconds "$SECONDS_EACH" --max-batch 64 \
    --out "$DEST/batching-onnx-$DEVICE.json" 2>&1 | tee "$DEST/onnx.log" || status=1
else
  echo "ONNX Runtime has no CUDAExecutionProvider here: the ONNX figure needs onnxruntime-gpu" \
    | tee "$DEST/onnx.log"
fi
exit $status
