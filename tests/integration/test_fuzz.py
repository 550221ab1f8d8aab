"""10,000+ malformed or randomly mutated AdmissionReviews against the real server: never a 5xx,
never a crash, and memory that stays put (RSS before and after is printed)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHIPPED_POLICIES
from tests.integration.conftest import review
from tests.integration.test_server import pod
from tests.serverproc import ServerProcess

EXAMPLES = 10_000
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                       children, max_size=4),
    max_leaves=12,
)
PATHS = [("request",), ("request", "object"), ("request", "object", "metadata"),
         ("request", "object", "spec"), ("request", "object", "spec", "containers"),
         ("request", "object", "metadata", "annotations"), ("request", "uid"),
         ("request", "kind"), ("request", "namespace"),
         ("request", "object", "spec", "containers", 0),
         ("request", "object", "metadata", "annotations", "sidecar.company.com/inject")]


@st.composite
def mutated_reviews(draw: st.DrawFn) -> bytes:
    """A valid review with one part replaced by arbitrary JSON, or raw garbage bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    annotation = draw(st.sampled_from(["logging", "logging,metrics-exporter", "true", "false",
                                       "nope", " , ", "auth-proxy,adapter"]))
    document: Any = review(pod(annotation))
    path = draw(st.sampled_from(PATHS))
    node: Any = document
    for step in path[:-1]:
        container: Any = node
        node = container[step] if isinstance(node, dict | list) else None
    last: Any = path[-1]
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and node):
        node[last] = draw(JSON)
    text = json.dumps(document)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut]
    return text.encode()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("fuzz"), policies=SHIPPED_POLICIES)
    server.start()
    with server.client() as client:
        for index in range(200):  # warm up before the baseline
            client.post(server.url(), json=review(pod(), uid=str(index)))
    rss_before["kib"] = server.rss_kib()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_client(fuzz_server: ServerProcess) -> Iterator[httpx.Client]:
    with fuzz_server.client() as client:
        yield client


statuses: dict[int, int] = {}
rss_before: dict[str, int] = {}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=mutated_reviews())
def test_random_reviews_never_get_a_5xx(fuzz_server: ServerProcess, fuzz_client: httpx.Client,
                                        body: bytes) -> None:
    response = fuzz_client.post(fuzz_server.url(), content=body,
                                headers={"content-type": "application/json"})
    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert response.status_code in (200, 400), (response.status_code, body[:300])


def test_the_server_survived_with_stable_memory(fuzz_server: ServerProcess,
                                                fuzz_client: httpx.Client) -> None:
    assert sum(statuses.values()) >= EXAMPLES, "run the whole module: the fuzz test goes first"
    fuzzed = fuzz_server.rss_kib()
    for index in range(2000):
        fuzz_client.post(fuzz_server.url(), json=review(copy.deepcopy(pod()), uid=str(index)))
    after = fuzz_server.rss_kib()
    before = rss_before["kib"]
    print(f"\nfuzz: {sum(statuses.values())} reviews, statuses {statuses}; RSS before "
          f"{before} KiB, after fuzzing {fuzzed} KiB, after 2000 more valid reviews {after} KiB")
    assert fuzz_server.running
    assert fuzzed < before * 1.25 + 4096
    assert after < fuzzed * 1.05 + 2048
    assert fuzz_client.get(fuzz_server.url("/healthz")).status_code == 200
    assert "Traceback" not in Path(fuzz_server.log).read_text()
