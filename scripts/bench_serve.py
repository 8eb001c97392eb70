"""Load test of `disca-serve`: concurrent clients against a real Triton server, next to in-process
`Pipeline` runs on the same prompts and seeds, all in one run.

The server is its own process (`python -m disca.cli.serve`, as deployed); the clients are threads
here, one tritonclient connection each. Every Nth request is a bad one (unknown prompt word, wrong
embedding shape, frames out of range, a malformed schedule, a wrong input dtype): it must get an
error naming the problem, and every good request around it its clip, equal to the in-process clip
of the same prompt and seed. The soak sends --soak requests at --soak-concurrency and samples the
server's RSS (its whole process tree: disca-serve, tritonserver, the Python-backend stub).

    python scripts/bench_serve.py --requests 64 --soak 1000 [--json report.json]

Figures on a shared machine drift with the other work on it: the in-process baselines run before
and after the server phases, and both are printed.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np

from disca._atomic import check_writable
from disca.bundle import Bundle
from disca.cli._common import FiniteFloat, clean_errors
from disca.client import Client, ServerError, request_arrays
from disca.runtime.pipeline import DEMO_BUNDLE, Pipeline
from disca.serving.repository import MAX_QUEUE_DELAY_MS

# Prompts of one length (5 words): requests batch together only when their text lengths match
# (the graphs' text axis is not padded, so a padded batch would not equal the clip alone).
PROMPTS = [
    "a red circle moving left",
    "a blue square moving up",
    "a green triangle moving right",
    "a cyan circle growing bigger",
]
SEEDS = [0, 1, 2, 3]
ATOL = 1e-4  # the served clip vs the in-process clip of the same prompt and seed

BAD = [  # (input arrays, what the error must name)
    (request_arrays(prompt="a purple circle"), "unknown word 'purple'"),
    (request_arrays(text_embeddings=np.zeros((5, 16), np.float32)), "text_embeddings must be [L, 32]"),
    (request_arrays(prompt=PROMPTS[0], frames=64), "frames=64 is outside"),
    (request_arrays(prompt=PROMPTS[0], schedule="0,x,5"), "schedule must be comma-separated"),
    ({**request_arrays(prompt=PROMPTS[0]), "seed": np.zeros((1, 1), np.float32)}, "seed"),  # Triton refuses the dtype
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier and p not in tree]
        tree.update(frontier)
    total = 0
    for p in tree:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def make_requests(n: int, bad_every: int, offset: int = 0) -> list[tuple[dict, object]]:
    """n requests: (inputs, the (prompt, seed) key of the expected clip, or the expected error text)."""
    out = []
    for i in range(offset, offset + n):
        if bad_every and i % bad_every == bad_every - 1:
            out.append(BAD[(i // bad_every) % len(BAD)])
        else:
            prompt, seed = PROMPTS[i % len(PROMPTS)], SEEDS[(i // len(PROMPTS)) % len(SEEDS)]
            out.append((request_arrays(prompt=prompt, seed=seed), (prompt, seed)))
    return out


class Load:
    """Send requests from `concurrency` threads (one connection each); record every outcome."""

    def __init__(self, url: str, grpc: bool, references: dict):
        self.url, self.grpc, self.references = url, grpc, references
        self.local = threading.local()
        self.clients = []
        self.lock = threading.Lock()

    def client(self) -> Client:
        if not hasattr(self.local, "client"):
            self.local.client = Client(self.url, grpc=self.grpc, timeout_s=120)
            with self.lock:
                self.clients.append(self.local.client)
        return self.local.client

    def one(self, request) -> dict:
        inputs, expect = request
        start = time.perf_counter()
        try:
            result = self.client().infer(inputs)
        except ServerError as e:
            ms = (time.perf_counter() - start) * 1e3
            if isinstance(expect, str):
                return {
                    "kind": "bad",
                    "outcome": "ok" if expect in str(e) else "wrong-error",
                    "ms": ms,
                    "error": str(e),
                }
            lost = "cannot reach" in str(e) or "timed out" in str(e).lower()
            return {"kind": "good", "outcome": "lost" if lost else "failed", "ms": ms, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - anything else is a request without an answer
            return {"kind": "bad" if isinstance(expect, str) else "good", "outcome": "lost", "ms": 0, "error": repr(e)}
        ms = (time.perf_counter() - start) * 1e3
        if isinstance(expect, str):
            return {"kind": "bad", "outcome": "answered", "ms": ms}
        diff = float(np.abs(result.video - self.references[expect]).max())
        return {
            "kind": "good",
            "outcome": "ok" if diff <= ATOL else "wrong",
            "ms": ms,
            "batch": result.stats.get("batch"),
            "denoise_ms": result.stats.get("total_ms"),  # the server's denoising loop for this clip's batch
            "triton_batch": result.stats.get("triton_batch"),
        }

    def run(self, requests: list, concurrency: int) -> tuple[list[dict], float]:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            records = list(pool.map(self.one, requests))
        return records, time.perf_counter() - start

    def close(self):
        for c in self.clients:
            c.close()


def summary(records: list[dict], wall_s: float) -> dict:
    good = [r for r in records if r["kind"] == "good"]
    bad = [r for r in records if r["kind"] == "bad"]
    ok_ms = [r["ms"] for r in good if r["outcome"] == "ok"]
    # The server's time in the denoising loop, each batch once (its clips share one stats object): the
    # rest of the wall time is serving (protocol, queue, batching, transfers) and the clients.
    denoise_s = sum({r["denoise_ms"] for r in good if r.get("denoise_ms")}) / 1e3
    pct = (lambda q: float(np.percentile(ok_ms, q))) if ok_ms else (lambda q: None)
    return {
        "requests": len(records),
        "good": len(good),
        "ok": len(ok_ms),
        "wrong": sum(r["outcome"] == "wrong" for r in good),
        "failed": sum(r["outcome"] == "failed" for r in good),
        "lost": sum(r["outcome"] == "lost" for r in records),
        "bad": len(bad),
        "bad_named": sum(r["outcome"] == "ok" for r in bad),
        "clips_per_s": len(ok_ms) / wall_s,
        "wall_s": wall_s,
        "server_denoise_s": denoise_s,
        "outside_denoise": 1 - denoise_s / wall_s,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "triton_batches": dict(sorted(Counter(r["triton_batch"] for r in good if r.get("triton_batch")).items())),
        "denoise_batches": dict(sorted(Counter(r["batch"] for r in good if r.get("batch")).items())),
        "errors_seen": sorted({r["error"][:100] for r in records if r["outcome"] not in ("ok", "answered")})[:8],
    }


def baselines(pipe: Pipeline, references: dict, repeats: int) -> dict:
    """In-process: sequential clips (batch 1) and batches of the bundle's max batch, same prompts and seeds."""
    keys = [(p, s) for s in SEEDS for p in PROMPTS] * repeats
    ms = []
    start = time.perf_counter()
    for prompt, seed in keys:
        t0 = time.perf_counter()
        video = pipe.generate(prompt, seed=seed).video
        ms.append((time.perf_counter() - t0) * 1e3)
        references.setdefault((prompt, seed), video)
    sequential = len(keys) / (time.perf_counter() - start)
    b = pipe.bundle.ranges.batch[2]
    start = time.perf_counter()
    for i in range(0, len(keys), b):
        chunk = keys[i : i + b]
        pipe.generate(text_embeddings=np.stack([pipe.embed_prompt(p) for p, _ in chunk]), seed=[s for _, s in chunk])
    batched = len(keys) / (time.perf_counter() - start)
    return {
        "sequential_clips_per_s": sequential,
        "p50_ms": statistics.median(ms),
        "batch": b,
        "batched_clips_per_s": batched,
    }


def paired(pipe: Pipeline, load: Load, rounds: int) -> dict:
    """The two target ratios, robust to a shared machine's drift: in-process and served runs alternate
    in short blocks on the same prompts and seeds, so load from other work hits both sides alike.

    overhead: per-clip latency, in-process sequential vs served at concurrency 1 (4 clips a block);
    throughput: in-process batches of the bundle's max batch vs served at concurrency 8 (16 clips a block)."""
    keys = [(p, s) for s in SEEDS for p in PROMPTS]
    local_ms, served_ms = [], []
    local_s = served_s = 0.0
    b = pipe.bundle.ranges.batch[2]
    good = make_requests(len(keys), 0)  # the same 16 clips, all good requests
    for _ in range(rounds):
        for i in range(0, len(keys), 4):
            for prompt, seed in keys[i : i + 4]:
                t0 = time.perf_counter()
                pipe.generate(prompt, seed=seed)
                local_ms.append((time.perf_counter() - t0) * 1e3)
            records, _ = load.run(good[i : i + 4], 1)
            served_ms += [r["ms"] for r in records if r["outcome"] == "ok"]
        t0 = time.perf_counter()
        for i in range(0, len(keys), b):
            chunk = keys[i : i + b]
            pipe.generate(
                text_embeddings=np.stack([pipe.embed_prompt(p) for p, _ in chunk]), seed=[s for _, s in chunk]
            )
        local_s += time.perf_counter() - t0
        records, wall = load.run(good, 8)
        assert all(r["outcome"] == "ok" for r in records), records
        served_s += wall
    n = rounds * len(keys)
    return {
        "rounds": rounds,
        "clips_per_side": n,
        "local_p50_ms": statistics.median(local_ms),
        "served_c1_p50_ms": statistics.median(served_ms),
        "overhead_c1": statistics.median(served_ms) / statistics.median(local_ms) - 1,
        "local_batched_clips_per_s": n / local_s,
        "served_c8_clips_per_s": n / served_s,
        "throughput_c8_vs_batched": (n / served_s) / (n / local_s),
    }


def _levels(ctx, param, value: str) -> list[int]:
    try:
        levels = [int(x) for x in value.split(",")]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise click.BadParameter(f"got {value!r}: give positive client counts, comma-separated, e.g. 1,4,8")
    return levels


@click.command()
@click.option("--bundle", type=click.Path(path_type=Path), default=DEMO_BUNDLE, show_default=True)
@click.option(
    "--requests",
    "n_requests",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Requests per concurrency level.",
)
@click.option("--concurrency", default="1,2,4,8,16", show_default=True, callback=_levels)
@click.option(
    "--bad-every",
    default=8,
    show_default=True,
    type=click.IntRange(0),
    help="Every Nth request is a bad one (0: none).",
)
@click.option(
    "--baseline-repeats",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Passes over the 16 prompt x seed clips.",
)
@click.option(
    "--paired-rounds",
    default=4,
    show_default=True,
    type=click.IntRange(0),
    help="Rounds of the interleaved target comparison (0: none).",
)
@click.option("--soak", default=1000, show_default=True, type=click.IntRange(0), help="Soak requests (0: no soak).")
@click.option("--soak-concurrency", default=8, show_default=True, type=click.IntRange(1))
@click.option("--max-queue-delay-ms", default=2.0, show_default=True, type=FiniteFloat(0, MAX_QUEUE_DELAY_MS))
@click.option("--grpc", is_flag=True, help="Clients talk gRPC (default HTTP).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the report here.")
@clean_errors
def main(
    bundle,
    n_requests,
    concurrency,
    bad_every,
    baseline_repeats,
    paired_rounds,
    soak,
    soak_concurrency,
    max_queue_delay_ms,
    grpc,
    json_out,
):
    Bundle.open(bundle)  # checked before the server starts (it would die quietly, its output discarded)
    if json_out:
        check_writable(json_out, "--json report")  # now, not after the whole run
    ports = [free_port() for _ in range(3)]
    argv = [sys.executable, "-m", "disca.cli.serve", str(bundle), f"--max-queue-delay-ms={max_queue_delay_ms}"]
    argv += [f"--{k}-port={p}" for k, p in zip(("http", "grpc", "metrics"), ports)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    references: dict = {}
    try:
        with Pipeline.load(bundle) as pipe:  # loads while the server starts
            report["baseline_before"] = baselines(pipe, references, baseline_repeats)
            url = f"127.0.0.1:{ports[1] if grpc else ports[0]}"
            with Client(url, grpc=grpc) as probe:
                deadline = time.time() + 120
                while not probe.ready():
                    if server.poll() is not None or time.time() > deadline:
                        raise SystemExit("disca-serve did not become ready")
                    time.sleep(0.2)
            load = Load(url, grpc, references)
            load.run(make_requests(8, 0), 4)  # connections and the server's shapes warm
            report["levels"] = {}
            for c in concurrency:
                records, wall = load.run(make_requests(n_requests, bad_every), c)
                report["levels"][c] = summary(records, wall)
                print(f"concurrency {c}: {json.dumps(report['levels'][c])}", file=sys.stderr)
            report["baseline_after"] = baselines(pipe, references, baseline_repeats)
            if paired_rounds:
                report["paired"] = paired(pipe, load, paired_rounds)
            if soak:
                report["soak"] = run_soak(load, server.pid, soak, soak_concurrency, bad_every)
                with Client(url, grpc=grpc) as probe:
                    report["soak"]["ready_at_end"] = probe.ready()
            load.close()
    finally:
        server.terminate()  # SIGTERM: disca-serve drains and exits 0
        report["server_exit_code"] = server.wait(timeout=120)
    report["load_avg_end"] = os.getloadavg()
    print_report(report)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2, default=str))


def run_soak(load: Load, pid: int, n: int, concurrency: int, bad_every: int) -> dict:
    rss = [(0.0, tree_rss_mb(pid))]
    stop = threading.Event()
    start = time.perf_counter()

    def sample():
        while not stop.wait(2.0):
            rss.append((time.perf_counter() - start, tree_rss_mb(pid)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        records, wall = load.run(make_requests(n, bad_every, offset=1), concurrency)
    finally:
        stop.set()
        sampler.join()
    rss.append((time.perf_counter() - start, tree_rss_mb(pid)))
    second_half = [mb for t, mb in rss if t >= wall / 2]
    out = summary(records, wall)
    out.update(
        concurrency=concurrency,
        wall_s=wall,
        rss_mb_start=rss[0][1],
        rss_mb_mid=second_half[0],
        rss_mb_end=rss[-1][1],
        rss_mb_second_half_min=min(second_half),
        rss_mb_second_half_max=max(second_half),
        rss_second_half_spread=(max(second_half) - min(second_half)) / min(second_half),
        rss_samples=[(round(t, 1), round(mb, 1)) for t, mb in rss],
    )
    return out


def print_report(r: dict) -> None:
    b0, b1 = r["baseline_before"], r["baseline_after"]
    print(
        f"machine: {r['cpus']} CPUs, load average {r['load_avg_start'][0]:.1f} at start, "
        f"{r['load_avg_end'][0]:.1f} at end"
    )
    for name, b in (("before", b0), ("after", b1)):
        print(
            f"in-process {name}: sequential {b['sequential_clips_per_s']:.2f} clips/s (p50 {b['p50_ms']:.0f} ms), "
            f"batch {b['batch']}: {b['batched_clips_per_s']:.2f} clips/s"
        )
    print(
        "| concurrency | clips/s | p50 ms | p95 ms | p99 ms | good ok | wrong | failed | lost | bad named "
        "| Triton batches | wall outside denoise |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c, s in r["levels"].items():
        print(
            f"| {c} | {s['clips_per_s']:.2f} | {s['p50_ms'] or 0:.0f} | {s['p95_ms'] or 0:.0f} "
            f"| {s['p99_ms'] or 0:.0f} | "
            f"{s['ok']}/{s['good']} | {s['wrong']} | {s['failed']} | {s['lost']} | {s['bad_named']}/{s['bad']} | "
            f"{s['triton_batches']} | {s['outside_denoise']:.1%} |"
        )
    if "paired" in r:
        p = r["paired"]
        print(
            f"interleaved, {p['clips_per_side']} clips a side: concurrency 1 p50 {p['served_c1_p50_ms']:.0f} ms vs "
            f"in-process {p['local_p50_ms']:.0f} ms: overhead {p['overhead_c1']:+.1%}; concurrency 8 "
            f"{p['served_c8_clips_per_s']:.2f} clips/s vs in-process batched {p['local_batched_clips_per_s']:.2f}: "
            f"{p['throughput_c8_vs_batched']:.1%}"
        )
    seq = (b0["p50_ms"] + b1["p50_ms"]) / 2
    c1 = r["levels"].get(1) or r["levels"].get("1")
    if c1:
        print(
            f"table vs baselines: overhead at concurrency 1: p50 {c1['p50_ms']:.0f} ms vs in-process {seq:.0f} ms: "
            f"{c1['p50_ms'] / seq - 1:+.1%}"
        )
    c8 = r["levels"].get(8) or r["levels"].get("8")
    if c8:
        batched = (b0["batched_clips_per_s"] + b1["batched_clips_per_s"]) / 2
        print(
            f"table vs baselines: concurrency 8 at {c8['clips_per_s'] / batched:.1%} of in-process batch {b0['batch']}"
        )
    if "soak" in r:
        s = r["soak"]
        print(
            f"soak: {s['requests']} requests in {s['wall_s']:.0f} s at concurrency {s['concurrency']}: "
            f"{s['clips_per_s']:.2f} clips/s; good ok {s['ok']}/{s['good']}, wrong {s['wrong']}, failed {s['failed']}, "
            f"lost {s['lost']}, bad named {s['bad_named']}/{s['bad']}; ready at end: {s['ready_at_end']}; "
            f"RSS {s['rss_mb_start']:.0f} -> {s['rss_mb_mid']:.0f} (half) -> {s['rss_mb_end']:.0f} MiB, "
            f"second half {s['rss_mb_second_half_min']:.0f}..{s['rss_mb_second_half_max']:.0f} MiB "
            f"({s['rss_second_half_spread']:.1%})"
        )
    print(f"server exit code after SIGTERM: {r['server_exit_code']}")


if __name__ == "__main__":
    main()
