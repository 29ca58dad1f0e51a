"""Reading and writing model folders and files: the Hub (`hub`), safetensors
(`weight_files`), loading and converting (`loading`), mlx-lm's layout
(`mlx_lm_layout`), GGUF (`gguf`, `gguf_loading`, `gguf_tokenizer`),
Hugging Face export (`export`), output folders (`run_folders`) and the
built-in demo model (`demo`)."""
