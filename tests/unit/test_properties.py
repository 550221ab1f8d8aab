"""Properties of the engine over generated pods and policies (hypothesis).

For any pod and any policies: injecting is idempotent; `--remove` after inject gives back the
original; the pod's own fields change only by the documented additions; and the patch applied
with `jsonpatch` equals the pod built independently from what `render` decided.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.engine import EngineConfig, mutate, unmutate
from webhook.policy import InjectionPolicy, PolicySet, compile_policy
from webhook.render import PodView, RenderOptions, render
from webhook.selection import Inject, Selection, select

STATUS = "sidecar.company.com/status"
INJECT = "sidecar.company.com/inject"
POLICY_NAMES = ["alpha", "beta", "gamma"]
CONTAINER_NAMES = ["app", "web", "worker", "logging-agent", "alpha-side", "beta-init"]
VOLUME_NAMES = ["data", "cache", "alpha-vol", "shared"]
PATHS = ["/data", "/var/log/app", "/cache", "/tmp"]
ENV_NAMES = ["A", "B", "LOG_DIR", "PORT"]
KEYS = ["app", "team/owner", "a~b", "x/y~z", "ünïcode", INJECT]
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
               max_size=8)
PLACEHOLDER_TEXT = st.sampled_from(
    ["${pod.name}", "${pod.namespace}", "${pod.labels['app']}", "$(HOME)", "plain"]) | TEXT


def containers(names: list[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    env = st.lists(st.sampled_from(ENV_NAMES), unique=True, max_size=2).map(
        lambda ns: [{"name": n, "value": "pod"} for n in ns])
    mounts = st.lists(st.sampled_from(PATHS), unique=True, max_size=2).map(
        lambda ps: [{"name": "data", "mountPath": p} for p in ps])

    def build(name: str, e: list[Any], m: list[Any]) -> dict[str, Any]:
        c: dict[str, Any] = {"name": name, "image": f"{name}:1"}
        if e:
            c["env"] = e
        if m:
            c["volumeMounts"] = m
        return c

    return st.tuples(*[st.tuples(st.just(n), env, mounts) for n in names]).map(
        lambda items: [build(*item) for item in items])


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(CONTAINER_NAMES), unique=True, min_size=1, max_size=3))
    own = draw(containers(names))
    init_names = draw(st.lists(st.sampled_from(["own-init", "beta-init"]), unique=True,
                               max_size=1).filter(lambda ns: not set(ns) & set(names)))
    metadata: dict[str, Any] = {}
    if draw(st.booleans()):
        metadata["name"] = "pod-1"
    else:
        metadata["generateName"] = "pod-"
    for field in ("labels", "annotations"):
        values = draw(st.dictionaries(st.sampled_from(KEYS[:-1]), TEXT, max_size=3))
        if values:
            metadata[field] = values
    choice = draw(st.sampled_from(["list", "true", "false", "absent"]))
    if choice != "absent":
        value = choice
        if choice == "list":
            value = ",".join(draw(st.lists(st.sampled_from(POLICY_NAMES), min_size=1,
                                           max_size=4)))
        metadata.setdefault("annotations", {})[INJECT] = value
    spec: dict[str, Any] = {"containers": own}
    if init_names:
        spec["initContainers"] = [{"name": n, "image": "init:1"} for n in init_names]
    volumes = draw(st.lists(st.sampled_from(VOLUME_NAMES), unique=True, max_size=2))
    if volumes or any("volumeMounts" in c for c in own):
        spec["volumes"] = [{"name": v, "emptyDir": {}}
                           for v in dict.fromkeys(["data", *volumes])]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@st.composite
def policy_sets(draw: st.DrawFn) -> PolicySet:
    compiled = {}
    for name in POLICY_NAMES:
        volumes = draw(st.lists(st.sampled_from([f"{name}-vol", "shared", "cache"]), unique=True,
                                max_size=2))
        side = [{"name": f"{name}-side", "image": "side:1",
                 "args": [draw(PLACEHOLDER_TEXT)]}] if draw(st.booleans()) else []
        init = [{"name": f"{name}-init", "image": "init:1"}] if draw(st.booleans()) else []
        if draw(st.booleans()) and name == "alpha":
            side.append({"name": "logging-agent", "image": "clash:1"})
        spec: dict[str, Any] = {
            "containers": side, "initContainers": init,
            "initContainerPosition": draw(st.sampled_from(["first", "last"])),
            "sidecarMode": draw(st.sampled_from(["auto", "native", "classic"])),
            "volumes": [{"name": v, "emptyDir": {}} for v in volumes],
            "env": [{"name": n, "value": draw(PLACEHOLDER_TEXT)}
                    for n in draw(st.lists(st.sampled_from(ENV_NAMES), unique=True, max_size=2))],
            "podAnnotations": draw(st.dictionaries(st.sampled_from(KEYS[:-1]), TEXT, max_size=2)),
            "podLabels": draw(st.dictionaries(st.sampled_from(KEYS[:-1]), TEXT, max_size=2)),
            "resources": {"requests": {"cpu": "10m"}},
        }
        if volumes:
            paths = draw(st.lists(st.sampled_from(PATHS), unique=True, max_size=2))
            spec["volumeMounts"] = [
                {"name": volumes[0], "mountPath": p,
                 "containers": draw(st.sampled_from([["*"], ["web"], ["app", "worker"]]))}
                for p in paths]
        document = {"apiVersion": "sidecar.company.com/v1alpha1", "kind": "InjectionPolicy",
                    "metadata": {"name": name}, "spec": spec}
        compiled[name] = compile_policy(InjectionPolicy.model_validate(document), name)
    return PolicySet(compiled)


CONFIGS = st.builds(
    EngineConfig,
    selection=st.builds(Selection, default_policies=st.sampled_from([(), ("beta",)])),
    on_conflict=st.sampled_from(["deny", "skip"]),
    kube_version=st.sampled_from([None, (1, 28), (1, 31)]),
)
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def load(fragments: Sequence[str]) -> list[Any]:
    """Rendered additions are pre-rendered JSON text."""
    return [json.loads(fragment) for fragment in fragments]


def inject(pod: dict[str, Any], policies: PolicySet, config: EngineConfig) -> dict[str, Any]:
    outcome = mutate(pod, namespace="shop", policies=policies, config=config)
    result: dict[str, Any] = jsonpatch.apply_patch(pod, copy.deepcopy(outcome.patch))
    return result


@SETTINGS
@given(pods(), policy_sets(), CONFIGS)
def test_injection_is_idempotent(pod: dict[str, Any], policies: PolicySet,
                                 config: EngineConfig) -> None:
    once = inject(pod, policies, config)
    again = mutate(once, namespace="shop", policies=policies, config=config)
    if STATUS in once["metadata"].get("annotations", {}):
        assert again.patch == []
    assert inject(once, policies, config) == once


@SETTINGS
@given(pods(), policy_sets(), CONFIGS)
def test_remove_after_inject_gives_back_the_original(pod: dict[str, Any], policies: PolicySet,
                                                     config: EngineConfig) -> None:
    injected = inject(pod, policies, config)
    if injected == pod:
        return
    removal = unmutate(injected, namespace="shop", config=config)
    assert jsonpatch.apply_patch(injected, removal) == pod


@SETTINGS
@given(pods(), policy_sets(), CONFIGS)
def test_the_pods_own_fields_change_only_by_documented_additions(
    pod: dict[str, Any], policies: PolicySet, config: EngineConfig,
) -> None:
    out = inject(pod, policies, config)
    assert set(out) == set(pod)
    for field in ("labels", "annotations"):
        for key, value in pod["metadata"].get(field, {}).items():
            assert out["metadata"][field][key] == value
    assert {k: v for k, v in out["metadata"].items() if k not in ("labels", "annotations")} == {
        k: v for k, v in pod["metadata"].items() if k not in ("labels", "annotations")}
    spec, new = pod["spec"], out["spec"]
    assert set(new) - set(spec) <= {"initContainers", "volumes"}
    assert new["containers"][: len(spec["containers"])] == [
        {**c, **{k: new["containers"][i][k] for k in ("env", "volumeMounts")
                 if k in new["containers"][i]}}
        for i, c in enumerate(spec["containers"])]
    for old, updated in zip(spec["containers"], new["containers"], strict=False):
        for key in ("env", "volumeMounts"):
            assert updated.get(key, [])[: len(old.get(key, []))] == old.get(key, [])
    own_init = [c for c in new.get("initContainers", []) if c in spec.get("initContainers", [])]
    assert own_init == spec.get("initContainers", [])
    assert new.get("volumes", [])[: len(spec.get("volumes", []))] == spec.get("volumes", [])


@SETTINGS
@given(pods(), policy_sets(), CONFIGS)
def test_the_patch_applied_equals_the_rendered_pod(pod: dict[str, Any], policies: PolicySet,
                                                   config: EngineConfig) -> None:
    view = PodView.of(pod, "shop")
    decision = select(view.metadata, namespace="shop", settings=config.selection,
                      known=policies.policies)
    if not isinstance(decision, Inject):
        return
    options = RenderOptions(status_key=STATUS, inject_key=INJECT, on_conflict=config.on_conflict,
                            kube_version=config.kube_version)
    rendered = render(view, [policies[n] for n in decision.policies], options)
    if rendered.denial is not None or not rendered.applied:
        return
    expected = copy.deepcopy(pod)
    meta, spec = expected["metadata"], expected["spec"]
    meta.setdefault("annotations", {}).update(rendered.annotations)
    if rendered.labels:
        meta.setdefault("labels", {}).update(rendered.labels)
    init = (load(rendered.init_front) + spec.get("initContainers", [])
            + load(rendered.init_back))
    if init:
        spec["initContainers"] = init
    spec["containers"] += load(rendered.containers)
    for index, mounts in rendered.mounts.items():
        spec["containers"][index].setdefault("volumeMounts", []).extend(load(mounts))
    for index, env in rendered.env.items():
        spec["containers"][index].setdefault("env", []).extend(load(env))
    if rendered.volumes:
        spec.setdefault("volumes", []).extend(load(rendered.volumes))
    assert inject(pod, policies, config) == expected
