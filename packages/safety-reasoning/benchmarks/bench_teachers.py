"""Synthesis throughput of the two teachers against issue 18's targets, measured side by side in one run.

1. ``TransformersTeacher`` on ``tiny_causal_lm()``: ``--prompts`` teacher prompts (the default guidelines and a
   toy query, as :func:`synthesize` sends them) answered in batches of ``--batch-size`` against one prompt at a
   time (``batch_size=1``), ``--max-new-tokens`` sampled tokens each. Target: batched at least 3 times faster.
2. ``OpenAITeacher`` against a stub endpoint on loopback that answers each request after a fixed ``--delay``:
   ``concurrency=8`` against ``concurrency=1`` (sequential) on the same prompts. Target: at least 5 times
   faster.

Each row is the median wall-clock time of ``--repeats`` rounds; a round times every arm once, in turn, so that
a change of the machine's load reaches all arms alike.

Usage (from the workspace root):
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 uv run --no-sync python \
        packages/safety-reasoning/benchmarks/bench_teachers.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from paperpack.core.hf import tiny_causal_lm
from paperpack.safety_reasoning import GuidelineSet, OpenAITeacher, SynthesisConfig, TransformersTeacher
from paperpack.safety_reasoning.experiment import toy_queries
from paperpack.safety_reasoning.synthesis import teacher_prompt


def interleaved(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall-clock seconds of each arm over ``repeats`` rounds (one warm-up call each first)."""
    for run in arms.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, run in arms.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def stub_endpoint(delay: float) -> ThreadingHTTPServer:
    """An OpenAI-compatible endpoint on loopback that answers every request after ``delay`` seconds."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay)
            payload = json.dumps({"choices": [{"message": {"content": "<think>ok</think>fine"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--delay", type=float, default=0.05)
    options = parser.parse_args()

    config, guidelines = SynthesisConfig(), GuidelineSet.default()
    queries = toy_queries()[: options.prompts]
    prompts = [teacher_prompt(row["prompt"], guidelines, config) for row in queries]
    load = os.getloadavg()
    print(f"{len(prompts)} teacher prompts; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")

    model, tokenizer = tiny_causal_lm()
    settings = {"max_new_tokens": options.max_new_tokens, "seed": 0}
    batched = TransformersTeacher(model, tokenizer, batch_size=options.batch_size, **settings)
    single = TransformersTeacher(model, tokenizer, batch_size=1, **settings)
    local = interleaved({"batched": lambda: batched(prompts), "one at a time": lambda: single(prompts)},
                        options.repeats)  # fmt: skip
    ratio = local["one at a time"] / local["batched"]
    print(f"TransformersTeacher, tiny_causal_lm, {options.max_new_tokens} new tokens per answer:")
    print(
        f"  batch_size={options.batch_size}: {local['batched']:.3f} s   batch_size=1: {local['one at a time']:.3f} s"
    )
    print(f"  speed-up {ratio:.2f}x (target >= 3)  {'met' if ratio >= 3 else 'NOT met'}")

    server = stub_endpoint(options.delay)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    concurrent = OpenAITeacher(url, "stub", concurrency=8)
    sequential = OpenAITeacher(url, "stub", concurrency=1)
    remote = interleaved({"concurrency 8": lambda: concurrent(prompts), "sequential": lambda: sequential(prompts)},
                         options.repeats)  # fmt: skip
    server.shutdown()
    ratio = remote["sequential"] / remote["concurrency 8"]
    print(f"OpenAITeacher, loopback stub answering after {options.delay * 1000:.0f} ms:")
    print(f"  concurrency=8: {remote['concurrency 8']:.3f} s   concurrency=1: {remote['sequential']:.3f} s")
    print(f"  speed-up {ratio:.2f}x (target >= 5)  {'met' if ratio >= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
