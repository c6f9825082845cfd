#!/usr/bin/env bash
# Wheels of the packages the device machines lack, for bench/gpu_check.sh to install there.
#
#   bench/gpu_wheels.sh        (here, where pip reaches the package index; writes .whl/, git-ignored)
#
# The H200 machines lent by the `device` tool hold torch, rich and the rest of the scientific stack
# for Python 3.12, cannot reach an index, and lack pydantic, datasets and textual (their package
# list: /work/.library/device/KINDS.md); their transformers, accelerate and peft are older
# releases than ours, so those come too, with what ours require that theirs do not (kernels, which
# transformers 5.25 loads every model through, and its tomlkit). The versions are those of this checkout's .venv, the
# ones the test suite passes with; torch stays theirs (a CUDA build). bitsandbytes, for QLoRA, comes
# unpacked into .whl/bnb with only its CUDA 13 libraries (their torch is a cu130 build): the whole
# wheel, a library for every CUDA release, is 43 MB and would take the call past its 64 MiB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PACKAGES="pydantic pydantic-core annotated-types typing-inspection typing-extensions datasets dill multiprocess
textual mdit-py-plugins platformdirs textual-plotext plotext transformers accelerate peft huggingface-hub tokenizers
safetensors httpx2 httpcore2 truststore hf-xet kernels tomlkit"
pins=()
for name in $PACKAGES; do
    pins+=("$name==$(.venv/bin/pip show "$name" | sed -n 's/^Version: //p')")
done
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"
BNB=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 -d "$BNB" "bitsandbytes==0.50.2"
python3 -m zipfile -e "$BNB"/bitsandbytes-*.whl .whl/bnb
find .whl/bnb/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*_cuda13*' ! -name '*_cpu.so' -delete
rm -rf "$BNB"
exclude="$(git rev-parse --git-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qx "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"
du -sh .whl
