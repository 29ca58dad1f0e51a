"""Throughput and time to first token of `mlx-llm serve` against `mlx_lm.server`, with concurrent clients.

    cd benchmarks && python serve.py [--model PATH] [--clients 1 4 8] [--requests 3] [--rounds 2]
        [--max-tokens 64] [--blas mkl|reference] [--quiet-load 1.0] [--workdir /tmp/mlx_llm_bench]
        [--servers mlx-llm mlx-lm]

Both servers run as subprocesses on 127.0.0.1, started with the same
interpreter, the same checkpoint (by default a random-weight
SmolLM-135M-shaped Llama with a small byte-level BPE tokenizer, written once
to --workdir) and the same BLAS: --blas mkl preloads this environment's MKL
(``pip install mkl``) into both, --blas reference preloads nothing (and turns
mlx-llm's own MKL preload off); the library each process mapped is checked
and printed. Both stay up for the whole run and take turns: for each round,
each concurrency, each server, every client sends --requests streamed, greedy
/v1/completions requests one after another (the same prompts for both
servers; max_tokens 64; tokens are counted from each stream's usage). A
round's throughput is completion tokens over its wall time; the table gives
the median over rounds (and every round), p50 / p95 time to the first
streamed token, each server's scaling (N clients over 1 client) and
mlx-llm / mlx-lm ratios. Needs the serve and bench extras
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


def server_environment(blas: str) -> dict[str, str]:
    """The environment both servers start with: the same BLAS preloaded (or none)."""
    environment = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "MKL_THREADING_LAYER")}
    environment["MLX_LLM_AUTO_MKL"] = "0"  # mlx-llm would preload MKL by itself; the benchmark decides for both
    if blas == "mkl":
        library = Path(sys.prefix) / "lib" / "libmkl_rt.so.3"
        if not library.is_file():
            raise SystemExit(f"--blas mkl: {library} is missing; pip install mkl, or pass --blas reference")
        environment.update(LD_PRELOAD=str(library), MKL_THREADING_LAYER="INTEL")
    return environment


def mapped_blas(pid: int) -> str:
    """Which BLAS a running process mapped: ``MKL`` or ``reference`` (Linux), else ``unknown``."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    return "MKL" if "libmkl_rt" in maps else "reference" if "libblas" in maps else "unknown"


def start(server: str, model: Path, port: int, environment: dict[str, str]) -> subprocess.Popen:
    if server == "mlx-llm":
        command = [sys.executable, "-m", "mlx_llm_cli.main", "serve", "--model", str(model), "--port", str(port)]
    else:
        command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--port", str(port),
                   "--log-level", "WARNING"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
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
    tokens = sum(count for _, count in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "seconds": wall,
            "tokens_per_s": tokens / wall, "ttfts": [first for first, _ in results]}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def wait_for_quiet(limit: float, most_seconds: float) -> None:
    """Wait (at most ``most_seconds``) until the 1-minute load average is below ``limit``: other jobs
    on a shared machine distort every number."""
    deadline = time.monotonic() + most_seconds
    while time.monotonic() < deadline:
        try:
            if float(Path("/proc/loadavg").read_text().split()[0]) < limit:
                return
        except (OSError, ValueError):
            return
        time.sleep(5)
    print(f"the load average stayed above {limit}; measuring anyway", flush=True)


def warm_up(url: str, model: str, clients: int) -> None:
    """Load the model and run the solo and the batched paths once (short requests)."""
    request(url, model, PROMPTS[0], 4)
    threads = [threading.Thread(target=request, args=(url, model, PROMPTS[index % len(PROMPTS)], 8))
               for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def summarize(runs: list[dict], servers: list[str], clients: list[int]) -> list[dict]:
    """Per server and concurrency: the median round (tokens/s), every round, and the pooled TTFTs."""
    rows = []
    for server in servers:
        for count in clients:
            mine = [run for run in runs if run["server"] == server and run["clients"] == count]
            if not mine:
                continue
            ttfts = sorted(first for run in mine for first in run["ttfts"])
            rows.append({"server": server, "clients": count, "rounds": [run["tokens_per_s"] for run in mine],
                         "tokens_per_s": statistics.median(run["tokens_per_s"] for run in mine),
                         "tokens": sum(run["tokens"] for run in mine), "ttft_p50": statistics.median(ttfts),
                         "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="A model folder both servers read (default: the random 135M).")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=3, help="Requests per client, one after another.")
    parser.add_argument("--rounds", type=int, default=2, help="Times every (concurrency, server) pair is measured.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--blas", choices=["mkl", "reference"], default="mkl",
                        help="The BLAS both servers run with (mkl: this environment's libmkl_rt, preloaded).")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mlx_llm_bench"))
    parser.add_argument("--servers", nargs="+", default=["mlx-llm", "mlx-lm"], choices=["mlx-llm", "mlx-lm"])
    parser.add_argument("--quiet-load", type=float, default=0.0,
                        help="Before measuring, wait (up to 10 minutes) for a 1-minute load average below this.")
    args = parser.parse_args()
    model = args.model or make_model(args.workdir)
    environment = server_environment(args.blas)
    if args.quiet_load > 0:
        wait_for_quiet(args.quiet_load, 600)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = load_average()
    processes, urls, blas = {}, {}, {}
    try:
        for server in args.servers:
            port = free_port()
            processes[server] = start(server, model, port, environment)
            urls[server] = f"http://127.0.0.1:{port}/v1"
            warm_up(urls[server], str(model), max(args.clients))
            blas[server] = mapped_blas(processes[server].pid)
        print(f"{started}, load average {load_before}, BLAS: " + ", ".join(f"{s} {b}" for s, b in blas.items()),
              flush=True)
        runs = []
        for turn in range(args.rounds):
            for clients in args.clients:
                for server in args.servers:  # the servers take turns, so a busy spell of the machine hits both
                    run = {"server": server, "round": turn,
                           **run_clients(urls[server], str(model), clients, args.requests, args.max_tokens)}
                    runs.append(run)
                    print(f"round {turn + 1} {server:8} clients={clients}: {run['tokens_per_s']:7.1f} tokens/s "
                          f"({run['tokens']} tokens, {run['seconds']:.1f} s)", flush=True)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(30)
    rows = summarize(runs, args.servers, args.clients)
    by_key = {(row["server"], row["clients"]): row["tokens_per_s"] for row in rows}
    print()
    print("| server | clients | tokens/s (median) | every round | vs 1 client | vs mlx-lm | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        solo = by_key.get((row["server"], 1))
        peer = by_key.get(("mlx-lm", row["clients"]))
        scaling = f"{row['tokens_per_s'] / solo:.2f}x" if solo else "-"
        versus = f"{row['tokens_per_s'] / peer:.2f}x" if peer and row["server"] != "mlx-lm" else "-"
        print(f"| {row['server']} | {row['clients']} | {row['tokens_per_s']:.1f} | "
              f"{' / '.join(f'{value:.1f}' for value in row['rounds'])} | {scaling} | {versus} | "
              f"{row['ttft_p50']:.3f} | {row['ttft_p95']:.3f} |")
    ratios = {clients: by_key[("mlx-llm", clients)] / by_key[("mlx-lm", clients)]
              for clients in args.clients if ("mlx-llm", clients) in by_key and ("mlx-lm", clients) in by_key}
    scaling = {server: {clients: by_key[(server, clients)] / by_key[(server, 1)] for clients in args.clients
                        if (server, clients) in by_key} for server in args.servers if (server, 1) in by_key}
    if ratios:
        print("mlx-llm / mlx-lm throughput: " + ", ".join(f"{c} clients {r:.2f}x" for c, r in ratios.items()))
    for server, values in scaling.items():
        print(f"{server} scaling over 1 client: " + ", ".join(f"{c} clients {r:.2f}x" for c, r in values.items()))
    load_after = load_average()
    print(f"load average before {load_before}, after {load_after}")
    print(json.dumps({"benchmark": "serve", "date": started, "cpu_count": os.cpu_count(), "blas": blas,
                      "load_average": {"before": load_before, "after": load_after},
                      "requests_per_client": args.requests, "rounds": args.rounds, "max_tokens": args.max_tokens,
                      "rows": rows, "ratios_vs_mlx_lm": ratios, "scaling_vs_1_client": scaling}))


if __name__ == "__main__":
    main()
