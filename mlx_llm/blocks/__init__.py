"""The blocks every model is built from: attention, masks, KV caches, rotary
positions, norms, feed-forward and mixture-of-experts layers, the Transformer
layer and stacks, task heads and the output type models return.

Blocks import nothing of `mlx_llm` above them (no model, workflow or file
I/O); the CPU-only switches come from `mlx_llm.cpu`.
"""
