"""Text generation: `generate` (streaming, batched), `sampling` (the one
`SamplingConfig` and token choice), `stopping` (finishing text),
`generation_config` (a model folder's defaults) and `chat` (sessions)."""
