"""The ``mlx-llm`` command line, installed as the package ``mlx_llm_cli``."""
