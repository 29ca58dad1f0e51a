"""What serves only MLX's CPU backend, behind one switch (`backend`): the
vectorized transcendental functions (`fast_math`) and BLAS detection and
weight-order timing (`tuning`). On Metal and CUDA none of it runs."""
