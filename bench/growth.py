"""Cost growth: the latency of one review against pod size, policies loaded and policies applied,
and the memory of one server after many injections.

    python -m bench.growth [--plot FILE.png] [--requests 1000000] [--repeat 7] [--no-server-check]

Latency is measured in this process through the real pipeline after the HTTP edge: the review's
bytes -> `parse_review` -> `Runtime.decide` -> `orjson.dumps` of the answer (or, where the runtime
has it, `Runtime.respond(review, body)`, what `/mutate` calls, with its answer cache emptied
before each review: a pod not seen before), with the settings `serve` uses
(`Settings().engine_config()`, no cluster, info logging off as at `--log-level warning`,
`gc.freeze()` after loading). Each point is the best of `--repeat` batches (each about 0.1 s,
`time.perf_counter`); the points of a series are timed interleaved, batch by batch, so a change in
the machine's load falls on all of them alike. `spread` is the median batch over the best one (the
noise at that point); `calls` is the number of Python function calls per review (cProfile), which
no load changes: equal calls, equal work. With an answer cache, `same pod again` is the same review
again (another replica of the same pod, a hit), and `cache full` a new pod each time through a
runtime whose cache is full (a miss that evicts; timed alone, after the others, so that the
cache's objects do not slow the collections of the rest). Three series:

- pod size: 1 to 400 containers like the 60 KB pod of `python -m bench` (image, args, 12 env vars,
  a port, resources, a probe), the shipped policies, `logging,metrics-exporter` applied;
- policies loaded: 1 to 500 generated policies beside the shipped ones, a one-container pod asking
  for `logging` only (must be flat);
- policies applied: 1 to 10 generated policies (each adds a sidecar, a volume mounted into the
  pod's containers, and an env var), a one-container pod.

Unless `--no-server-check`, the last point of each series also goes through a real `serve` process
with `wrk` (1 connection, each review a new uid and a pod not seen before), for what the edge adds
on top. Then one `serve` process (shipped policies, `--log-level warning`, TLS, keep-alive, 16
connections) answers `--requests` injections while its VmRSS is read from /proc at a few points;
the target is at most 100 MiB. The review is the `logging` one (or, with `--rss-containers N`, a
pod of N containers with two policies) as compact JSON, as the apiserver sends it, each with its
own uid, its pod drawn at random from `--templates` pods that differ in one label (4096 by
default: more than an answer cache of 1024 holds, so it fills, hits, misses and evicts; 1 for
replicas of a single pod). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import base64
import copy
import cProfile
import gc
import inspect
import math
import pstats
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.__main__ import (
    INJECT,
    LUA,
    POD,
    ROOT,
    Server,
    injector,
    large_pod,
    measure,
    review,
    with_policies,
)
from tests.serverproc import free_port, generate_certs
from webhook.policy import POLICY_SUFFIXES, load_policy_dir
from webhook.review import parse_review
from webhook.runtime import Runtime
from webhook.settings import Settings

POD_SIZES = (1, 10, 50, 100, 200, 400)
POLICIES_LOADED = (1, 10, 100, 500)
POLICIES_APPLIED = tuple(range(1, 11))
RSS_TARGET_MIB = 100.0
#: RSS over the second half of the run rising by more than this is called growth (a leak),
#: in a run of at least LONG_ENOUGH reviews
GROWTH_MIB = 1.0
LONG_ENOUGH = 200_000
#: policies loaded but not applied: flat if every point is within this of the first
FLAT = 0.10
#: pod size: super-linear if the last segment's µs per container is over this times the 10->50's
LINEAR = 1.5
#: appended to `LUA`: every request gets its own uid, as every review from the apiserver does,
#: and one of `templates` pods, at random
VARIED = """local head, middle, tail = [[%s]], [[%s]], [[%s]]
local templates = %d
local run, n = os.time(), 0
math.randomseed(run)
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil,
                    head .. run .. "-" .. n .. middle .. math.random(templates) .. tail)
end
"""
UID, TEMPLATE = "uid-goes-here", "template-goes-here"
#: templates to draw from for a pod that is, in practice, never seen twice
NEVER_AGAIN = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Policies and reviews


def generated_policy(index: int) -> str:
    """A policy like a small shipped one: a native sidecar with env, a port, a probe and
    resources, a volume mounted into it and into the pod's containers, and an env var."""
    name = f"gen-{index:03d}"
    return f"""apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: {name}
spec:
  containers:
    - name: {name}-agent
      image: registry.example.com/platform/agent-{index}:1.0.0
      args: ["--listen=:{9000 + index}", "--tag=${{pod.namespace}}.${{pod.labels['app']}}"]
      env:
        - {{name: AGENT_ID, value: "{name}"}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
      ports:
        - {{name: agent-{index}, containerPort: {9000 + index}}}
      readinessProbe:
        httpGet: {{path: /ready, port: {9000 + index}}}
      volumeMounts:
        - {{name: {name}-data, mountPath: /var/lib/{name}}}
      securityContext:
        runAsNonRoot: true
        allowPrivilegeEscalation: false
        capabilities: {{drop: [ALL]}}
  volumes:
    - name: {name}-data
      emptyDir: {{sizeLimit: 64Mi}}
  volumeMounts:
    - {{name: {name}-data, mountPath: /var/run/{name}, readOnly: true}}
  env:
    - {{name: GEN_{index:03d}_ADDR, value: "127.0.0.1:{9000 + index}"}}
  resources:
    requests: {{cpu: 10m, memory: 16Mi}}
    limits: {{cpu: 50m, memory: 32Mi}}
"""


def policy_dir(parent: Path, generated: int) -> Path:
    """The shipped policies and `generated` more, one file each, as a ConfigMap would mount."""
    directory = parent / f"policies-{generated}"
    if directory.is_dir():
        return directory
    directory.mkdir()
    for path in (ROOT / "policies").iterdir():
        if path.suffix in POLICY_SUFFIXES:
            shutil.copy(path, directory / path.name)
    for index in range(generated):
        (directory / f"gen-{index:03d}.yaml").write_text(generated_policy(index))
    return directory


def generated_names(count: int) -> str:
    return ",".join(f"gen-{index:03d}" for index in range(count))


def body_of(pod: dict[str, Any]) -> bytes:
    return orjson.dumps(review(pod))


def runtime_for(directory: Path) -> Runtime:
    """What `serve --policies DIRECTORY` serves from, without a cluster."""
    runtime = Runtime(load_policy_dir(directory), Settings(policies=directory).engine_config())
    gc.collect()
    gc.freeze()  # as `serve` does once it has loaded
    return runtime


# ---------------------------------------------------------------------------------------------
# In-process latency


Call = Callable[[], bytes]


def pipelines(runtime: Runtime, body: bytes) -> tuple[Call, Call | None]:
    """One review of `body` through the pipeline, for a pod not seen before; and for the same
    pod again (None without an answer cache)."""
    respond = getattr(runtime, "respond", None)
    answers = getattr(runtime, "answers", None)
    if (respond is None or answers is None
            or "body" not in inspect.signature(respond).parameters):
        return lambda: orjson.dumps(runtime.decide(parse_review(body))), None
    clear = answers.clear

    def miss() -> bytes:
        clear()
        answer: bytes = respond(parse_review(body), body)
        return answer

    def hit() -> bytes:
        answer: bytes = respond(parse_review(body), body)
        return answer

    return miss, hit


def churn(runtime: Runtime, body: bytes) -> tuple[Call, Callable[[], int]] | None:
    """A new pod each call (`body` with one more label, never the same value twice) through a
    runtime of its own, whose answer cache stays full and evicts; and the cache's length.
    None without an answer cache."""
    fresh = Runtime(runtime.policies, runtime.config)
    respond = getattr(fresh, "respond", None)
    answers = getattr(fresh, "answers", None)
    if (respond is None or answers is None
            or "body" not in inspect.signature(respond).parameters):
        return None
    head, tail = body.split(b'"labels":{', 1)  # the pod's: the review has none of its own
    head += b'"labels":{"pod-template-hash":"h'
    tail = b'",' + tail
    count = iter(range(1, 2**62))

    def call() -> bytes:
        new = b"%s%d%s" % (head, next(count), tail)
        answer: bytes = respond(parse_review(new), new)
        return answer

    return call, lambda: len(answers)


@dataclass
class Timing:
    """Batches of one pipeline at one point."""

    call: Call
    number: int = 0
    batches: list[float] = field(default_factory=list)  # seconds per review

    @property
    def best_us(self) -> float:
        return min(self.batches) * 1e6

    @property
    def spread(self) -> float:
        return statistics.median(self.batches) / min(self.batches) - 1


@dataclass
class Point:
    """One x of a series: the review, what its answer must hold, and the timings."""

    x: int
    runtime: Runtime
    body: bytes
    expect: Sequence[str]
    answer_bytes: int = 0
    calls: float = 0.0  # Python function calls per review
    timings: list[Timing] = field(default_factory=list)  # a new pod, then the same again
    full: Timing | None = None  # a new pod each time, the answer cache full

    def __post_init__(self) -> None:
        miss, hit = pipelines(self.runtime, self.body)
        self.timings = [Timing(miss)] + ([Timing(hit)] if hit is not None else [])

    def call(self) -> bytes:
        return self.timings[0].call()

    def check(self) -> None:
        """The answer admits the pod with a patch naming every expected container."""
        answer = self.call()
        response = orjson.loads(answer)["response"]
        if not response.get("allowed") or "patch" not in response:
            raise SystemExit(f"bench.growth: x={self.x}: no injection: {response}")
        patch = base64.b64decode(response["patch"]).decode()
        missing = [name for name in self.expect if f'"name":"{name}"' not in patch]
        if missing:
            raise SystemExit(f"bench.growth: x={self.x}: the patch lacks {missing}")
        self.answer_bytes = len(answer)
        for timing in self.timings[1:]:
            if orjson.loads(timing.call())["response"] != response:
                raise SystemExit(f"bench.growth: x={self.x}: the cached answer differs")
        profile = cProfile.Profile()
        profile.runcall(lambda: [self.call() for _ in range(10)])
        self.calls = pstats.Stats(profile).total_calls / 10  # type: ignore[attr-defined]

    @property
    def best_us(self) -> float:
        return self.timings[0].best_us

    @property
    def spread(self) -> float:
        return self.timings[0].spread


def calibrate(call: Callable[[], object], target: float = 0.1) -> int:
    """How many calls take about `target` seconds."""
    number = 1
    while True:
        started = time.perf_counter()
        for _ in range(number):
            call()
        elapsed = time.perf_counter() - started
        if elapsed >= target / 4:
            return max(1, math.ceil(number * target / elapsed))
        number *= 4


def time_series(points: list[Point], repeat: int) -> None:
    """Best of `repeat` batches per point, the points interleaved batch by batch. A point's
    timings run in a row, so its `cached` batch finds the answer its miss batch just cached."""
    timings = [timing for point in points for timing in point.timings]
    for point in points:
        point.check()
    for timing in timings:
        timing.number = calibrate(timing.call)
    for _ in range(repeat):
        for timing in timings:
            batch(timing)
    for point in points:  # one at a time: a full cache's objects slow every collection
        full_cache(point, repeat)


def batch(timing: Timing) -> None:
    call, number = timing.call, timing.number
    started = time.perf_counter()
    for _ in range(number):
        call()
    timing.batches.append((time.perf_counter() - started) / number)


def full_cache(point: Point, repeat: int) -> None:
    """`point` for a new pod each time, with the answer cache full (when there is one)."""
    made = churn(point.runtime, point.body)
    if made is None:
        return
    call, length = made
    before = -1
    while length() > before:  # until it evicts: full
        before = length()
        response = orjson.loads(call())["response"]
    if not response.get("allowed") or "patch" not in response:
        raise SystemExit(f"bench.growth: x={point.x}: no injection with a full cache")
    timing = Timing(call, calibrate(call))
    for _ in range(repeat):
        batch(timing)
    point.full = Timing(_spent, timing.number, timing.batches)  # the full cache goes
    del made, call, length, timing
    gc.collect()


def _spent() -> bytes:
    raise RuntimeError("a timing whose runtime is gone")


@dataclass
class Series:
    """A named series, its points, and what its table says."""

    key: str
    title: str
    x_label: str
    points: list[Point]
    per: str = ""  # the unit of x, for the marginal-cost column ("container", "policy")
    verdict: str = ""
    server: dict[str, float] | None = None

    def table(self) -> str:
        first = self.points[0]
        cached = len(first.timings) > 1
        lines = [f"\n### {self.title}\n",
                 f"| {self.x_label} | review KB | answer KB | µs per review | x first | spread "
                 f"| calls | x first |"
                 + (f" µs per {self.per} (marginal) |" if self.per else "")
                 + (" µs, same pod again | µs, cache full |" if cached else ""),
                 "|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if self.per else "")
                 + ("---:|---:|" if cached else "")]
        previous: Point | None = None
        for point in self.points:
            row = (f"| {point.x} | {len(point.body) / 1024:.1f} | "
                   f"{point.answer_bytes / 1024:.1f} | {point.best_us:.1f} | "
                   f"{point.best_us / first.best_us:.2f} | {point.spread * 100:.0f}% | "
                   f"{point.calls:.0f} | {point.calls / first.calls:.2f} |")
            if self.per:
                row += (" - |" if previous is None else
                        f" {(point.best_us - previous.best_us) / (point.x - previous.x):.2f} |")
            if cached:
                at_full = f"{point.full.best_us:.1f}" if point.full else "-"
                row += f" {point.timings[1].best_us:.1f} | {at_full} |"
            lines.append(row)
            previous = point
        lines.append(f"\n{self.verdict}")
        full = [(point.full.best_us / point.best_us - 1, point) for point in self.points
                if point.full is not None]
        if full:
            worst, at = max(full, key=lambda pair: pair[0])
            lines.append(f"\nWith the answer cache full, a pod not seen before costs "
                         f"{min(f for f, _ in full) * 100:+.0f}% to {worst * 100:+.0f}% "
                         f"({self.x_label} = {at.x}) against an empty cache.")
        if self.server is not None:
            last = self.points[-1]
            # the server's cache fills during the check: compare with a full one, if any
            inside = last.full.best_us if last.full is not None else last.best_us
            lines.append(
                f"\nThrough `serve` with wrk (1 connection, {self.x_label} = {last.x}, a pod not "
                f"seen before each time): {self.server['rps']:.0f} req/s, p50 "
                f"{self.server['p50']:.2f} ms, p99 {self.server['p99']:.2f} ms; "
                f"{1e6 / self.server['rps']:.0f} µs per request against {inside:.0f} µs in process"
                f"{' (cache full)' if last.full is not None else ''}: the edge (HTTP, TLS, "
                f"loopback, wrk) adds {1e6 / self.server['rps'] - inside:.0f} µs.")
        return "\n".join(lines)


def linear_verdict(series: Series) -> str:
    """Whether µs per container stops growing with the pod: the marginal cost of the last
    segment against that of 10 -> 50, and the exponent k of t ~ n^k over the last segments."""
    by_x = {point.x: point.best_us for point in series.points}
    xs = sorted(by_x)
    low = (by_x[50] - by_x[10]) / 40
    high = (by_x[xs[-1]] - by_x[xs[-2]]) / (xs[-1] - xs[-2])
    exponent = math.log(by_x[xs[-1]] / by_x[100]) / math.log(xs[-1] / 100)
    fit_slope, fit_base = _least_squares(xs, [by_x[x] for x in xs])
    calls = {point.x: point.calls for point in series.points}
    calls_low = (calls[50] - calls[10]) / 40
    calls_high = (calls[xs[-1]] - calls[xs[-2]]) / (xs[-1] - xs[-2])
    linear = high <= LINEAR * low
    return (f"**{'At most linear' if linear else 'SUPER-LINEAR'}**: {high:.2f} µs per "
            f"{series.per} from {xs[-2]} to {xs[-1]} against {low:.2f} from 10 to 50 "
            f"({high / low:.2f}x; super-linear past {LINEAR}x); t ~ n^{exponent:.2f} from 100 to "
            f"{xs[-1]}; least squares: {fit_base:.0f} µs + {fit_slope:.2f} µs per {series.per}. "
            f"Function calls per {series.per}: {calls_low:.1f} from 10 to 50, {calls_high:.1f} "
            f"from {xs[-2]} to {xs[-1]}.")


def flat_verdict(series: Series) -> str:
    first = series.points[0].best_us
    worst = max(series.points, key=lambda point: abs(point.best_us / first - 1))
    change = worst.best_us / first - 1
    noise = max(point.spread for point in series.points)
    flat = abs(change) <= FLAT
    calls = sorted({round(point.calls) for point in series.points})
    same = (f"the same {calls[0]} function calls per review at every point" if len(calls) == 1
            else f"function calls per review from {calls[0]} to {calls[-1]}")
    if flat:
        word = "Flat"
    elif len(calls) == 1 and abs(change) <= noise:
        word = "Flat within the noise (the same work; rerun on a quiet machine)"
    else:
        word = "NOT FLAT"
    return (f"**{word}**: the furthest point ({worst.x}) is "
            f"{change * 100:+.1f}% from the first (flat within {FLAT * 100:.0f}%; the largest "
            f"batch spread, the noise, is {noise * 100:.0f}%); {same}.")


def _least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Slope and intercept of the least-squares line through the points."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
             / sum((x - mean_x) ** 2 for x in xs))
    return slope, mean_y - slope * mean_x


def latency_series(tmp: Path, repeat: int) -> list[Series]:
    shipped = runtime_for(policy_dir(tmp, 0))
    sidecars = ["logging-agent", "metrics-exporter"]
    size = Series("size", "Latency against pod size (logging, metrics-exporter applied)",
                  "containers", [Point(n, shipped, body_of(large_pod(n)), sidecars)
                                 for n in POD_SIZES], per="container")
    loaded = Series(
        "loaded", "Latency against policies loaded, not applied (a 1-container pod, logging)",
        "generated policies loaded",
        [Point(n, runtime_for(policy_dir(tmp, n)), body_of(POD), ["logging-agent"])
         for n in POLICIES_LOADED])
    ten = runtime_for(policy_dir(tmp, max(POLICIES_APPLIED)))
    applied = Series(
        "applied", "Latency against policies applied (generated ones, a 1-container pod)",
        "policies applied",
        [Point(n, ten, body_of(with_policies(POD, generated_names(n))),
               [f"gen-{i:03d}-agent" for i in range(n)]) for n in POLICIES_APPLIED],
        per="policy")
    for series in (size, loaded, applied):
        started = time.monotonic()
        time_series(series.points, repeat)
        print(f"bench.growth: {series.key}: timed in {time.monotonic() - started:.0f} s",
              flush=True)
    size.verdict = linear_verdict(size)
    loaded.verdict = flat_verdict(loaded)
    applied.verdict = linear_verdict_applied(applied)
    return [size, loaded, applied]


def linear_verdict_applied(series: Series) -> str:
    slope, base = _least_squares([p.x for p in series.points],
                                 [p.best_us for p in series.points])
    first = series.points[1].best_us - series.points[0].best_us
    last = series.points[-1].best_us - series.points[-2].best_us
    return (f"Each policy applied adds {slope:.1f} µs (least squares; {base:.0f} µs at none); "
            f"the 2nd added {first:.1f} µs, the last {last:.1f} µs.")


# ---------------------------------------------------------------------------------------------
# Through the real server


def serve(port: int, certs: Path, policies: Path) -> Server:
    """`injector` (bench's `serve` process at --log-level warning) on another policy dir."""
    server = injector(port, certs)
    argv = list(server.argv)
    argv[argv.index("--policies") + 1] = str(policies)
    return replace(server, argv=argv)


def server_checks(series: list[Series], tmp: Path, certs: Path, seconds: int) -> None:
    """The last point of each series through `serve` and wrk, one connection, each review a pod
    not seen before (a new uid and a new label value each time: no answer cache hits)."""
    for one in series:
        last = one.points[-1]
        directory = Path(last.runtime.policies.source)
        script = tmp / f"check-{one.key}.lua"
        varied_script(script, orjson.loads(last.body)["request"]["object"], NEVER_AGAIN)
        with serve(free_port(), certs, directory) as server:
            measure(server.port, script, 1, 1)  # warm-up
            one.server = measure(server.port, script, seconds, 1)
        print(f"bench.growth: {one.key}: checked through serve", flush=True)


# ---------------------------------------------------------------------------------------------
# Memory of one server


@dataclass
class Memory:
    """VmRSS (and the peak, VmHWM) of the server after so many reviews."""

    requests: int
    seconds: float
    rss_mib: float
    hwm_mib: float


def status_mib(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM of `pid`, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values["VmRSS"], values["VmHWM"]


def counters(port: int) -> tuple[int, dict[str, int]]:
    """How many admission reviews the server has answered, and its answer cache's lookups by
    result (empty without one), from its own /metrics."""
    text = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=False, timeout=10).text
    count, lookups = None, {}
    for line in text.splitlines():
        if line.startswith("sidecar_injector_request_duration_seconds_count"):
            count = int(float(line.split()[-1]))
        elif line.startswith("sidecar_injector_answer_cache_lookups_total{"):
            lookups[line.split('"')[1]] = int(float(line.split()[-1]))
    if count is None:
        raise SystemExit("bench.growth: no request count in the server's /metrics")
    return count, lookups


def varied_script(path: Path, pod: dict[str, Any], templates: int) -> None:
    """A wrk script posting a review of `pod` as compact JSON, a new uid each time, the pod
    with one of `templates` values of a `pod-template-hash` label, at random."""
    pod = copy.deepcopy(pod)
    pod["metadata"].setdefault("labels", {})["pod-template-hash"] = TEMPLATE
    document = review(pod)
    document["request"]["uid"] = UID
    text = orjson.dumps(document).decode()
    head, rest = text.split(UID)
    middle, tail = rest.split(TEMPLATE)
    if "]]" in text:
        raise SystemExit("bench.growth: the review holds ']]', which ends the Lua string")
    path.write_text(LUA % text + VARIED % (head + "bench-", middle + "h", tail, templates))


def memory_pod(containers: int) -> dict[str, Any]:
    """The memory run's pod: bench's `logging` one, or a larger pod with two policies."""
    return copy.deepcopy(POD) if containers == 1 else large_pod(containers)


def memory_run(tmp: Path, certs: Path, requests: int, samples: int, connections: int,
               templates: int, containers: int) -> tuple[list[Memory], dict[str, int]]:
    """`requests` injections through one `serve` process; its memory at `samples` points, and
    the answer cache's lookups."""
    script = tmp / "varied.lua"
    varied_script(script, memory_pod(containers), templates)
    with injector(free_port(), certs) as server:
        assert server.process is not None
        pid = server.process.pid
        if "serve" not in Path(f"/proc/{pid}/cmdline").read_text():
            raise SystemExit(f"bench.growth: process {pid} is not the server")
        started = time.monotonic()
        taken = [Memory(counters(server.port)[0], 0.0, *status_mib(pid))]
        warm = measure(server.port, script, 3, connections)  # also sizes the chunks
        chunk = max(2, math.ceil(requests / warm["rps"] / samples))
        done, lookups = counters(server.port)
        taken.append(Memory(done, time.monotonic() - started, *status_mib(pid)))
        while done < requests:
            left = (requests - done) / warm["rps"]
            measure(server.port, script, max(1, min(chunk, math.ceil(left))), connections)
            done, lookups = counters(server.port)
            taken.append(Memory(done, time.monotonic() - started, *status_mib(pid)))
            print(f"bench.growth: {done} requests, VmRSS {taken[-1].rss_mib:.1f} MiB",
                  flush=True)
    return taken, lookups


def memory_report(taken: list[Memory], lookups: dict[str, int], args: argparse.Namespace,
                  ) -> str:
    start, end = taken[0], taken[-1]
    half = min(taken, key=lambda m: abs(m.requests - end.requests / 2))
    later = [m for m in taken if m.requests >= half.requests]
    slope = (_least_squares([m.requests for m in later], [m.rss_mib for m in later])[0]
             * 1024 * 1024 if len(later) > 1 else 0.0)
    grows = end.rss_mib - half.rss_mib > GROWTH_MIB
    verdict = ("too short to tell" if end.requests < LONG_ENOUGH
               else "GROWS (a leak?)" if grows else "plateaus")
    peak = max(end.hwm_mib, *(m.rss_mib for m in taken))
    what = ("the `logging` injection into a 1-container pod" if args.rss_containers == 1 else
            f"logging and metrics-exporter into a pod of {args.rss_containers} containers")
    lines = [f"\n### RSS of one `serve` process ({args.connections} connections, keep-alive, "
             f"TLS, {what}, a new uid per review, its pod one of {args.templates} at random)\n",
             "| reviews answered | seconds | VmRSS MiB | VmHWM MiB |", "|---:|---:|---:|---:|"]
    lines += [f"| {m.requests} | {m.seconds:.0f} | {m.rss_mib:.1f} | {m.hwm_mib:.1f} |"
              for m in taken]
    since = taken[1] if len(taken) > 2 else taken[0]
    rate = (end.requests - since.requests) / max(end.seconds - since.seconds, 1e-9)
    lines.append(
        f"\n{end.requests} reviews in {end.seconds:.0f} s (~{rate:.0f} req/s after the "
        f"warm-up); VmRSS {start.rss_mib:.1f} MiB after the first review, {half.rss_mib:.1f} "
        f"at {half.requests}, {end.rss_mib:.1f} at the end; peak {peak:.1f} MiB: "
        f"**{'within' if peak <= RSS_TARGET_MIB else 'OVER'} the {RSS_TARGET_MIB:.0f} MiB "
        f"target**. Over the second half: {end.rss_mib - half.rss_mib:+.2f} MiB, "
        f"{slope:+.2f} bytes per review (least squares): "
        f"**{verdict}** (growth: over {GROWTH_MIB:.0f} MiB in the second half of a run of at "
        f"least {LONG_ENOUGH} reviews; in a shorter one the answer cache and the allocator are "
        f"still filling).")
    if lookups:
        total = sum(lookups.values()) or 1
        lines.append("\nAnswer cache lookups: " + ", ".join(
            f"{result} {count} ({count / total * 100:.0f}%)"
            for result, count in sorted(lookups.items())) + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plot and main


def plot(path: Path, series: list[Series], taken: list[Memory] | None) -> None:
    import matplotlib  # noqa: PLC0415 - only with --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = len(series) + (1 if taken else 0)
    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    axes = list(grid.flat)
    for axis in axes[panels:]:
        axis.set_visible(False)
    for axis, one in zip(axes, series, strict=False):
        xs = [point.x for point in one.points]
        axis.plot(xs, [point.best_us for point in one.points], marker="o", label="a new pod")
        if len(one.points[0].timings) > 1:
            axis.plot(xs, [point.timings[1].best_us for point in one.points], marker=".",
                      label="the same pod again (cached)")
        full = [(point.x, point.full.best_us) for point in one.points if point.full]
        if full:
            axis.plot(*zip(*full, strict=True), marker="s", linestyle="--",
                      label="a new pod, answer cache full")
        axis.legend(fontsize=8)
        axis.set_xlabel(one.x_label)
        axis.set_ylabel("µs per review (best of batches)")
        axis.set_title(one.title.split(" (")[0], fontsize=10)
        axis.set_ylim(bottom=0)
        if one.key == "loaded":
            axis.set_xscale("log")
        axis.grid(alpha=0.3)
    if taken:
        axis = axes[panels - 1]
        axis.plot([m.requests for m in taken], [m.rss_mib for m in taken], marker="o",
                  label="VmRSS")
        axis.axhline(RSS_TARGET_MIB, color="red", linestyle="--", label="target")
        axis.set_xlabel("reviews answered")
        axis.set_ylabel("MiB")
        axis.set_title("RSS of one serve process", fontsize=10)
        axis.set_ylim(bottom=0, top=max(RSS_TARGET_MIB, *(m.hwm_mib for m in taken)) * 1.2)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"bench.growth: wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, help="write a PNG of every series here")
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="reviews for the memory run (0: no memory run)")
    parser.add_argument("--repeat", type=int, default=7, help="batches per latency point")
    parser.add_argument("--samples", type=int, default=10, help="memory readings during the run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--templates", type=int, default=4096,
                        help="distinct pods in the memory run (1: replicas of one pod)")
    parser.add_argument("--rss-containers", type=int, default=1,
                        help="containers of the memory run's pod (1: bench's `logging` pod; more: "
                             "a pod like bench's 60 KB one, logging and metrics-exporter)")
    parser.add_argument("--check-seconds", type=int, default=5)
    parser.add_argument("--no-server-check", action="store_true",
                        help="skip the wrk point per series through `serve`")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the latency series (the memory run only)")
    args = parser.parse_args()
    needs_wrk = args.requests > 0 or not args.no_server_check
    if needs_wrk and shutil.which("wrk") is None:
        raise SystemExit("bench.growth: wrk is not installed (apt-get install wrk)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        series = [] if args.no_latency else latency_series(tmp, args.repeat)
        taken: list[Memory] | None = None
        lookups: dict[str, int] = {}
        if needs_wrk:
            certs = tmp / "certs"
            generate_certs(certs)
            if not args.no_server_check:
                server_checks(series, tmp, certs, args.check_seconds)
            if args.requests > 0:
                taken, lookups = memory_run(tmp, certs, args.requests, args.samples,
                                            args.connections, args.templates,
                                            args.rss_containers)
    for one in series:
        print(one.table())
    if taken:
        print(memory_report(taken, lookups, args))
    print(f"\n(pod annotation {INJECT}; {time.monotonic() - started:.0f} s in all)")
    if args.plot and (series or taken):
        plot(args.plot, series, taken)


if __name__ == "__main__":
    main()
