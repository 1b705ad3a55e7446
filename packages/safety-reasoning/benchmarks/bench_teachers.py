"""Synthesis throughput of the two teachers against issue 18's targets, measured side by side in one run.

1. ``TransformersTeacher`` on ``tiny_causal_lm()``: ``--prompts`` teacher prompts (the default guidelines and a
   toy query, as :func:`synthesize` sends them) answered in batches of ``--batch-size`` against one prompt at a
   time (``batch_size=1``), ``--max-new-tokens`` sampled tokens each, every other setting the same. Both arms
   run with the shared guideline prefix cached once per call (``share_prefix=True``, the default), and again
   without it (``share_prefix=False``). Target: batched at least 3 times faster.
2. ``OpenAITeacher`` against a stub endpoint on loopback that answers each request after a fixed ``--delay``:
   ``concurrency=8`` against ``concurrency=1`` (sequential) on the same prompts. Target: at least 5 times
   faster.

Each row is the median of ``--repeats`` rounds, wall clock and the process's CPU time (the machine is shared:
with ``OMP_NUM_THREADS=1`` the CPU time is the work done, whatever the load); a round times every arm once, in
turn, so that a change of the machine's load reaches all arms alike.

Usage (from the workspace root):
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 uv run --no-sync python \
        packages/safety-reasoning/benchmarks/bench_teachers.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from paperpack.core.hf import encode_prompts, shared_prefix_length, tiny_causal_lm
from paperpack.safety_reasoning import GuidelineSet, OpenAITeacher, SynthesisConfig, TransformersTeacher
from paperpack.safety_reasoning.experiment import toy_queries
from paperpack.safety_reasoning.synthesis import teacher_prompt

Arm = TypeVar("Arm")


def interleaved(arms: dict[Arm, Callable[[], object]], repeats: int) -> dict[Arm, tuple[float, float]]:
    """Median (wall-clock, CPU) seconds of each arm over ``repeats`` rounds (one warm-up call each first)."""
    for run in arms.values():
        run()
    times: dict[Arm, list[tuple[float, float]]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, run in arms.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in times.items()
    }


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


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
    print(f"{len(prompts)} teacher prompts; load average {load()}")

    model, tokenizer = tiny_causal_lm()
    encoded = encode_prompts(tokenizer, prompts, chat=True)
    lengths = [len(ids) for ids in encoded]
    print(
        f"prompt tokens {min(lengths)}-{max(lengths)}, shared prefix {shared_prefix_length(encoded)} tokens"
    )
    settings = {"max_new_tokens": options.max_new_tokens, "seed": 0}
    teachers = {
        (size, share): TransformersTeacher(model, tokenizer, batch_size=size, share_prefix=share, **settings)
        for share in (True, False)
        for size in (options.batch_size, 1)
    }
    arms: dict[tuple[int, bool], Callable[[], object]] = {
        key: functools.partial(teacher, prompts) for key, teacher in teachers.items()
    }
    local = interleaved(arms, options.repeats)
    print(
        f"TransformersTeacher, tiny_causal_lm, {options.max_new_tokens} sampled new tokens per answer, "
        f"median of {options.repeats} rounds (wall s / CPU s); load average now {load()}:"
    )
    for share in (True, False):
        batched, single = local[(options.batch_size, share)], local[(1, share)]
        print(
            f"  share_prefix={share}: batch_size={options.batch_size} {batched[0]:.3f} / {batched[1]:.3f}   "
            f"batch_size=1 {single[0]:.3f} / {single[1]:.3f}   speed-up {single[0] / batched[0]:.2f}x wall, "
            f"{single[1] / batched[1]:.2f}x CPU (target >= 3)"
        )
    best, old = local[(options.batch_size, True)], local[(1, False)]
    print(
        f"  batched with the shared prefix against one at a time without it: {old[0] / best[0]:.2f}x wall, "
        f"{old[1] / best[1]:.2f}x CPU"
    )

    server = stub_endpoint(options.delay)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    concurrent = OpenAITeacher(url, "stub", concurrency=8)
    sequential = OpenAITeacher(url, "stub", concurrency=1)
    remote = interleaved({"concurrency 8": lambda: concurrent(prompts), "sequential": lambda: sequential(prompts)},
                         options.repeats)  # fmt: skip
    server.shutdown()
    ratio = remote["sequential"][0] / remote["concurrency 8"][0]
    print(f"OpenAITeacher, loopback stub answering after {options.delay * 1000:.0f} ms (wall clock):")
    print(
        f"  concurrency=8: {remote['concurrency 8'][0]:.3f} s   concurrency=1: {remote['sequential'][0]:.3f} s"
    )
    print(f"  speed-up {ratio:.2f}x (target >= 5)  {'met' if ratio >= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
