#!/usr/bin/env bash
# The README's generation table: every model/precision, as installed and with OpenBLAS preloaded.
#   bash benchmarks/generate_matrix.sh [LOG]     (Debian: apt-get install libopenblas0-pthread)
set -u
log=${1:-weights/bench/generate_matrix.log}
mkdir -p "$(dirname "$log")"
openblas=/usr/lib/x86_64-linux-gnu/libopenblas.so.0
for blas in installed openblas; do
  for config in "llama-135M float32" "llama-135M bfloat16" "llama-135M q4" "gpt2-124M float32"; do
    set -- $config
    if [ "$blas" = openblas ]; then
      LD_PRELOAD=$openblas python benchmarks/generate.py --shape "$1" --precision "$2" >>"$log" 2>&1
    else
      python benchmarks/generate.py --shape "$1" --precision "$2" >>"$log" 2>&1
    fi
  done
done
