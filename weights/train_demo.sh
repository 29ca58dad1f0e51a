#!/usr/bin/env bash
# The recipe of the built-in demo model (weights/demo). Run from the repository root.
# On Linux, preload a real BLAS for speed (the figures in the README used MKL):
#   pip install mkl && export LD_PRELOAD=$VIRTUAL_ENV/lib/libmkl_rt.so.3 MKL_THREADING_LAYER=INTEL
set -euo pipefail
mlx-llm train --arch gpt --config demo \
  --data data/tinyshakespeare/train.txt --valid data/tinyshakespeare/valid.txt \
  --vocab-size 2048 --seq-len 256 --batch-size 16 --steps 900 --warmup 200 \
  --lr 1e-3 --min-lr 1e-4 --dropout 0.2 --weight-decay 0.1 \
  --eval-every 200 --save-every 200 --save-dtype float16 --seed 0 \
  --out weights/demo "$@"
