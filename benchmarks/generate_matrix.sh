#!/usr/bin/env bash
# The README's generation table: every row, as installed, with OpenBLAS and with MKL preloaded.
#   bash benchmarks/generate_matrix.sh [LOG]
# OpenBLAS: apt-get install libopenblas0-pthread; MKL: pip install mkl (rows skipped when missing).
set -u
log=${1:-weights/bench/generate_matrix.log}
mkdir -p "$(dirname "$log")"
openblas=/usr/lib/x86_64-linux-gnu/libopenblas.so.0
mkl=${VIRTUAL_ENV:-$(dirname "$(dirname "$(command -v python)")")}/lib/libmkl_rt.so.3
small="--prompt-tokens 128 --gen-tokens 32 --repeats 2"  # half precision and 4-bit are slow on a CPU

row() {  # BLAS, then generate.py's arguments
  local blas=$1
  shift
  echo "== $blas: $*" >>"$log"
  case $blas in
    installed) python benchmarks/generate.py "$@" >>"$log" 2>&1 ;;
    openblas) [ -e "$openblas" ] && LD_PRELOAD=$openblas python benchmarks/generate.py "$@" >>"$log" 2>&1 ;;
    mkl) [ -e "$mkl" ] && LD_PRELOAD=$mkl MKL_THREADING_LAYER=INTEL python benchmarks/generate.py "$@" >>"$log" 2>&1 ;;
  esac
}

for blas in installed openblas mkl; do
  row "$blas" --shape llama-135M --precision float32
  row "$blas" --shape gpt2-124M --precision float32
done
row openblas --shape llama-135M --precision float32 --repeats 5 --no-transformers
row openblas --shape gpt2-124M --precision float32 --repeats 5 --no-transformers
row openblas --shape llama-135M --precision bfloat16 $small
row openblas --shape llama-135M --precision q4 $small
