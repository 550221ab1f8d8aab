"""Loading policies: every problem reported at once as `file:line: field: message`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import SHIPPED_POLICIES, WritePolicies
from webhook.errors import PolicyError
from webhook.policy import PolicySet, SidecarMode, load_policy_dir, policy_schema, revision

GOOD = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: logging
spec:
  containers:
    - name: log-shipper
      image: fluent/fluent-bit:3.2.4
  volumes:
    - name: app-logs
      emptyDir: {}
  volumeMounts:
    - name: app-logs
      mountPath: /var/log/app
  resources:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {cpu: 100m, memory: 128Mi}
"""


def load_problems(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(directory)
    return caught.value.problems


def test_a_valid_policy_loads_and_compiles(write_policies: WritePolicies) -> None:
    loaded = load_policy_dir(write_policies(logging=GOOD))
    policy = loaded["logging"]
    assert policy.mode is SidecarMode.AUTO
    assert policy.sidecar_names == ["log-shipper"]
    assert policy.classic_sidecars[0].value["resources"]["limits"] == {"cpu": "100m",
                                                                       "memory": "128Mi"}
    assert policy.native_sidecars[0].value["restartPolicy"] == "Always"
    assert "restartPolicy" not in policy.classic_sidecars[0].value


def test_a_bad_quantity_names_file_line_and_field(write_policies: WritePolicies) -> None:
    directory = write_policies(logging=GOOD.replace("cpu: 100m", "cpu: 1OOm"))
    assert load_problems(directory) == [
        f"{directory}/logging.yaml:17: spec.resources.limits.cpu: '1OOm' is not a quantity"
    ]


def test_an_unknown_container_field_is_rejected_by_the_kubernetes_schema(
    write_policies: WritePolicies,
) -> None:
    directory = write_policies(logging=GOOD.replace("image: fluent", "imag: fluent"))
    assert load_problems(directory) == [
        f"{directory}/logging.yaml:7: spec.containers[0]: "
        "Additional properties are not allowed ('imag' was unexpected)"
    ]


def test_an_injected_container_needs_an_image(write_policies: WritePolicies) -> None:
    directory = write_policies(logging=GOOD.replace("      image: fluent/fluent-bit:3.2.4\n", ""))
    assert load_problems(directory) == [
        f"{directory}/logging.yaml:7: spec.containers[0]: set image: "
        "an injected container needs an image"
    ]


def test_every_problem_of_every_file_is_reported_at_once(write_policies: WritePolicies) -> None:
    directory = write_policies(
        a=GOOD.replace("name: logging", "name: Not_A_Label"),
        b=GOOD.replace("mountPath: /var/log/app", "mountPath: 12"),
        c="key: [unclosed\n",
    )
    problems = load_problems(directory)
    assert [p.split(":")[1] for p in problems] == ["4", "14", "2"]
    assert "metadata.name" in problems[0]
    assert "spec.volumeMounts[0].mountPath" in problems[1]
    assert "invalid YAML" in problems[2]


def test_a_policy_name_defined_twice_names_both_places(write_policies: WritePolicies) -> None:
    directory = write_policies(a=GOOD, b=GOOD)
    assert load_problems(directory) == [
        f"{directory}/b.yaml:4: metadata.name: policy 'logging' is already defined at "
        f"{directory}/a.yaml:4; rename one of them"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(("image: fluent/fluent-bit:3.2.4", "image: x\n      restartPolicy: Always"),
                     "spec.containers[0].restartPolicy: remove it", id="restart-policy-is-owned"),
        pytest.param(("name: app-logs\n      emptyDir", "name: other\n      emptyDir"),
                     "spec.volumeMounts[0].name: volume 'app-logs' is not in spec.volumes",
                     id="mount-of-unknown-volume"),
        pytest.param(("name: log-shipper", "name: log-${pod.name}"),
                     "spec.containers[0].name: 'log-${pod.name}' is not a valid container name",
                     id="placeholder-in-a-name"),
        pytest.param(("kind: InjectionPolicy", "kind: Policy"),
                     "kind: 'InjectionPolicy' was expected", id="wrong-kind"),
        pytest.param(("  containers:", "  initContainerPosition: middle\n  containers:"),
                     "spec.initContainerPosition: 'middle' is not one of ['first', 'last']",
                     id="bad-position"),
    ],
)
def test_rules_beyond_the_schema(write_policies: WritePolicies, change: tuple[str, str],
                                 expected: str) -> None:
    directory = write_policies(logging=GOOD.replace(*change))
    problems = load_problems(directory)
    assert any(expected in p for p in problems), problems


def test_probes_are_refused_on_run_to_completion_init_containers(
    write_policies: WritePolicies,
) -> None:
    text = GOOD.replace("  containers:", "  initContainers:") .replace(
        "image: fluent/fluent-bit:3.2.4",
        "image: busybox:1.37\n      readinessProbe: {exec: {command: [/bin/true]}}")
    problems = load_problems(write_policies(logging=text))
    assert any("spec.initContainers[0].readinessProbe: not allowed" in p for p in problems)


def test_a_missing_directory_says_how_to_fix_it(tmp_path: Path) -> None:
    assert load_problems(tmp_path / "nope") == [
        f"{tmp_path / 'nope'}: policies directory does not exist (pass --policies DIR)"
    ]


def test_hidden_files_and_other_suffixes_are_ignored(write_policies: WritePolicies) -> None:
    directory = write_policies(logging=GOOD)
    (directory / ".hidden.yaml").write_text("not: a policy\n")
    (directory / "notes.txt").write_text("hello\n")
    assert load_policy_dir(directory).names() == ["logging"]


def test_the_published_schema_is_current() -> None:
    published = Path(__file__).resolve().parents[2] / "policies" / "schema.json"
    assert json.loads(published.read_text()) == policy_schema()


def test_the_shipped_policies_load(shipped: PolicySet) -> None:
    assert len(shipped) >= 11


def test_a_configmap_key_being_removed_is_not_an_error(tmp_path: Path) -> None:
    """The kubelet swaps `..data` first and removes the old key's link after: in between, the
    link points into `..data/` at nothing. That is no broken policy file."""
    root = tmp_path / "policies"
    (root / "..v2").mkdir(parents=True)
    (root / "..v2" / "logging.yaml").write_text((SHIPPED_POLICIES / "logging.yaml").read_text())
    (root / "..data").symlink_to("..v2")
    (root / "logging.yaml").symlink_to("..data/logging.yaml")
    (root / "removed.yaml").symlink_to("..data/removed.yaml")
    assert load_policy_dir(root).names() == ["logging"]


def test_the_revision_follows_the_order_and_content_of_the_applied_policies(
    write_policies: WritePolicies,
) -> None:
    """Two positional hashes, printed as 16 hex digits: what CEL can compute too."""
    named = {name: GOOD.replace("name: logging", f"name: {name}") for name in ("a", "b")}
    one = load_policy_dir(write_policies(**named))
    changed = named["a"].replace("fluent-bit:3.2.4", "fluent-bit:3.2.5")
    other = load_policy_dir(write_policies(a=changed, b=named["b"]))
    a, b = one["a"], one["b"]
    assert re.fullmatch("[0-9a-f]{16}", revision([a, b]))
    assert revision([a, b]) != revision([b, a])
    assert revision([a]) != revision([other["a"]])
    assert revision([b]) == revision([other["b"]])
    assert revision([]) == "0" * 16
