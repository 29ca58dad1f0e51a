"""Throughput and time to first token of `mlx-llm serve` against `mlx_lm.server`, with concurrent clients.

    python benchmarks/serve.py [--model PATH] [--clients 1 4 8] [--requests 2] [--max-tokens 64]
        [--workdir /tmp/mlx_llm_bench] [--servers mlx-llm mlx-lm]

Both servers run as subprocesses on 127.0.0.1 with the same checkpoint (by
default a random-weight SmolLM-135M-shaped Llama with a small byte-level BPE
tokenizer, written once to --workdir). For each concurrency, every client
sends --requests streamed, greedy /v1/completions requests one after another
(the same prompts for both servers; max_tokens 64; tokens are counted from
each stream's usage). Reported per server and concurrency:
completion tokens per second over the wall time of the whole run, and p50 /
p95 time to the first streamed token. Needs the serve and bench extras
(``pip install 'mlx-llm-kit[serve,bench]' openai``). Prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from common import save_random_checkpoint

SMOLLM_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain, step by step, how a refrigerator keeps food cold.",
    "List five things to pack for a week of hiking in the mountains and say why.",
    "What are the main differences between a violin and a viola?",
    "Describe the water cycle to a ten-year-old.",
    "Give three tips for writing clear documentation for a software library.",
    "Summarize the plot of a detective novel set in a small seaside town.",
    "Why do leaves change colour in autumn? Answer in a few sentences.",
]


def make_model(workdir: Path) -> Path:
    """The random SmolLM-135M-shaped Llama, with a tokenizer (the tests' byte-level BPE)."""
    folder = save_random_checkpoint("LlamaForCausalLM", "LlamaConfig", SMOLLM_135M, workdir / "llama-135M-serve")
    if not (folder / "tokenizer.json").exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tokenizer_fixtures import build_byte_level_bpe

        build_byte_level_bpe(folder)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(server: str, model: Path, port: int) -> subprocess.Popen:
    if server == "mlx-llm":
        command = ["mlx-llm", "serve", "--model", str(model), "--port", str(port)]
    else:
        command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--port", str(port),
                   "--log-level", "WARNING"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{server} exited with status {process.returncode}")
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{server} did not start in 120 s")


def request(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """One streamed greedy completion: (seconds to the first token, completion tokens)."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    start = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if chunk.choices and (chunk.choices[0].text or chunk.choices[0].finish_reason is None):
            chunks += 1
            if first is None:
                first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start, usage if usage is not None else chunks


def run_clients(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for turn in range(requests):
            outcome = request(url, model, PROMPTS[(index + turn) % len(PROMPTS)], max_tokens)
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ttfts = sorted(first for first, _ in results)
    tokens = sum(count for _, count in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "seconds": wall,
            "tokens_per_s": tokens / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="A model folder both servers read (default: the random 135M).")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=2, help="Requests per client, one after another.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mlx_llm_bench"))
    parser.add_argument("--servers", nargs="+", default=["mlx-llm", "mlx-lm"], choices=["mlx-llm", "mlx-lm"])
    args = parser.parse_args()
    model = args.model or make_model(args.workdir)
    rows = []
    for server in args.servers:
        port = free_port()
        process = start(server, model, port)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            request(url, str(model), PROMPTS[0], 4)  # loads the model and warms both paths up
            for clients in args.clients:
                row = {"server": server, **run_clients(url, str(model), clients, args.requests, args.max_tokens)}
                rows.append(row)
                print(f"{server:8} clients={clients}: {row['tokens_per_s']:7.1f} tokens/s, time to first token "
                      f"p50 {row['ttft_p50']:.3f} s, p95 {row['ttft_p95']:.3f} s ({row['tokens']} tokens, "
                      f"{row['seconds']:.1f} s)", flush=True)
        finally:
            process.terminate()
            process.wait(30)
    print()
    print("| server | clients | tokens/s | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['server']} | {row['clients']} | {row['tokens_per_s']:.1f} | {row['ttft_p50']:.3f} | "
              f"{row['ttft_p95']:.3f} |")
    by_key = {(row["server"], row["clients"]): row["tokens_per_s"] for row in rows}
    ratios = {clients: by_key[("mlx-llm", clients)] / by_key[("mlx-lm", clients)]
              for clients in args.clients if ("mlx-llm", clients) in by_key and ("mlx-lm", clients) in by_key}
    if ratios:
        print("mlx-llm / mlx-lm throughput: " + ", ".join(f"{c} clients {r:.2f}x" for c, r in ratios.items()))
    print(json.dumps({"benchmark": "serve", "cpu_count": os.cpu_count(), "rows": rows, "ratios": ratios}))


if __name__ == "__main__":
    main()
