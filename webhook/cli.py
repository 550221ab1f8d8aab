"""The `sidecar-injector` console script: serve, inject, policies, certs.

Errors are one readable line on stderr (never a traceback). Exit codes (SPEC section 5): 0 on
success; 1 when policies are invalid or an object is denied; 2 on bad usage or unreadable input.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from webhook import __version__
from webhook.certs import generate as generate_certs
from webhook.compiled import Target, compile_policies, name_problem
from webhook.engine import sample_pod_security
from webhook.errors import CertificateError, InputError, PolicyError, SuiteError
from webhook.offline import inject_text
from webhook.podsecurity import Level
from webhook.policy import PolicySet, load_policy_dir, policy_schema
from webhook.policytest import (
    failure_text,
    find_test_files,
    junit_xml,
    load_cases,
    run_case,
    suite_schema,
)
from webhook.selection import parse_policy_list
from webhook.settings import ENV_PREFIX, Settings, shipped_policies

EXIT_DENIED = 1
EXIT_USAGE = 2


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _policies_option(**kwargs: Any) -> Decorator:
    return click.option(
        "--policies", "policies_dir", type=click.Path(path_type=Path),
        envvar=f"{ENV_PREFIX}POLICIES", show_envvar=True,
        help="Directory of policy files [default: the shipped policies/].", **kwargs,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sidecar-injector")
def cli() -> None:
    """Inject init containers, sidecars, volumes and resources into Pods from policy files.

    Run the admission webhook with `serve`, or inject manifests offline with `inject`.
    """


# ---------------------------------------------------------------------------------------------
# serve


def _serve_option(name: str, **kwargs: Any) -> Decorator:
    env = f"{ENV_PREFIX}{name.lstrip('-').replace('-', '_').upper()}"
    return click.option(name, envvar=env, show_envvar=True, default=None, **kwargs)


@cli.command()
@_policies_option()
@_serve_option("--tls-cert", type=click.Path(path_type=Path),
               help="Serving certificate (PEM); re-read when it changes. "
                    "Without --tls-cert/--tls-key, self-signed dev certificates are made.")
@_serve_option("--tls-key", type=click.Path(path_type=Path), help="Private key of --tls-cert.")
@_serve_option("--host", help="Address to listen on [default: 0.0.0.0].")
@_serve_option("--port", type=int, help="HTTPS port [default: 8443].")
@_serve_option("--default-policies", help="Policies for pods that name none, e.g. 'logging,auth'.")
@_serve_option("--prefix", help="Annotation and label prefix [default: sidecar.company.com].")
@_serve_option("--kubeconfig", type=click.Path(path_type=Path),
               help="Kubeconfig for the Namespace watch and the Events on pods' owners "
                    "[default: in-cluster config, if any; neither: no cluster access].")
@_serve_option("--strict/--no-strict",
               help="Deny pods that name an unknown policy, or whose injection would break "
                    "their namespace's Pod Security level.")
@_serve_option("--on-conflict", type=click.Choice(["deny", "skip"]),
               help="On a name clash: deny the pod, or skip that policy with a warning.")
@_serve_option("--max-body-bytes", type=int, help="Largest request body [default: 3 MiB].")
@_serve_option("--request-timeout", type=float,
               help="Seconds a client has to send a request's headers and body, from connecting "
                    "or from the request's first byte; slower ones are disconnected (an idle "
                    "keep-alive connection is kept 120 s) [default: 10].")
@_serve_option("--max-connections", type=int,
               help="Open connections kept at most; past it the newest idle ones are closed "
                    "[default: 4096].")
@_serve_option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
               help="Log level [default: info].")
@_serve_option("--kube-version", help="Cluster version for sidecarMode: auto [default: native].")
@_serve_option("--reload-interval", type=float,
               help="Seconds between checks of the policy and certificate files [default: 2].")
@_serve_option("--events/--no-events",
               help="Record Events on the owners of pods skipped or denied (needs create and "
                    "patch on events) [default: on, with cluster access].")
@_serve_option("--engine", type=click.Choice(["webhook", "admission-policy", "hybrid"]),
               help="webhook: only answer reviews. admission-policy or hybrid (Kubernetes "
                    "1.36+, needs cluster access): also keep the policy set, compiled as by "
                    "`policies compile` (hybrid: `--hybrid`), applied to the cluster, at start, "
                    "on every policy reload and every minute [default: webhook].")
@_serve_option("--engine-name",
               help="--engine: name of the engine admission policy (the chart's fullname); "
                    "the others derive from it [default: sidecar-injector].")
@_serve_option("--engine-owner", metavar="CLUSTERROLE",
               help="--engine: make this ClusterRole the owner of the objects applied, so that "
                    "deleting it (the chart's own, at `helm uninstall`) deletes them too; needs "
                    "get on it [default: none: they outlive the server].")
@_serve_option("--pod-opt-in/--no-pod-opt-in",
               help="--engine: also bind pods labelled P/inject=enabled in plain namespaces "
                    "(the chart's webhook.podOptIn) [default: on].")
def serve(**flags: Any) -> None:
    """Run the HTTPS admission webhook (POST /mutate, /validate, /healthz, /readyz, /metrics).

    /mutate injects Pods; /validate (and /mutate) answers Deployments, StatefulSets, DaemonSets,
    ReplicaSets, Jobs and CronJobs with warnings only. With cluster access, a skipped or denied
    pod's owner gets an Event (InjectionSkipped, InjectionDenied).
    """
    settings = _settings(flags, "invalid settings")
    from webhook.serving import run  # noqa: PLC0415 - the web stack loads only for `serve`

    sys.exit(run(settings))


def _settings(flags: dict[str, Any], problem: str) -> Settings:
    """Settings from the options given (None: not given; `--policies` is `policies_dir`);
    invalid ones exit 2 with `error: PROBLEM: what is wrong`."""
    given = {key: value for key, value in flags.items() if value is not None}
    if "policies_dir" in given:
        given["policies"] = given.pop("policies_dir")
    try:
        return Settings(**given)
    except ValueError as exc:
        _fail(f"{problem}: {_first_error(exc)}", EXIT_USAGE)


def server_flags_from_args(args: list[str]) -> dict[str, Any]:
    """A `serve` command line (a Deployment's arguments) read by `serve`'s own options: the
    Settings fields it sets."""
    context = serve.make_context("serve", list(args), resilient_parsing=True)
    return {key: value for key, value in context.params.items() if value is not None}


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(exc)


# ---------------------------------------------------------------------------------------------
# inject


@cli.command()
@click.option("-f", "--filename", "source", required=True,
              help="Manifest file to inject, or - for standard input.")
@_policies_option()
@click.option("--default-policies", default="", help="Global default policies, e.g. 'logging'.")
@click.option("--namespace-policies", default=None,
              help="The namespace's default policies (what P/policies on it would say).")
@click.option("--kube-version", default=None, help="Cluster version for sidecarMode: auto.")
@click.option("--prefix", default=None, help="Annotation and label prefix.")
@click.option("--strict", is_flag=True,
              help="Deny pods that name an unknown policy or break --pod-security.")
@click.option("--on-conflict", type=click.Choice(["deny", "skip"]), default="deny",
              show_default=True, help="On a name clash: deny, or skip that policy.")
@click.option("--pod-security", type=click.Choice([level.value for level in Level]),
              default=None, help="The Pod Security level the namespace enforces (its "
              "pod-security.kubernetes.io/enforce label): a policy that would make a compliant "
              "pod break it is skipped (denied with --strict).")
@click.option("--namespace-labels", default=None, metavar="K=V,...",
              help="The namespace's labels, for policies restricted to some namespaces "
                   "(without it, such policies are not applied).")
@click.option("--remove", is_flag=True, help="Undo the injection recorded in P/status.")
def inject(*, source: str, policies_dir: Path | None, default_policies: str,
           namespace_policies: str | None, kube_version: str | None, prefix: str | None,
           strict: bool, on_conflict: str, pod_security: str | None,
           namespace_labels: str | None, remove: bool) -> None:
    """Inject Pods and pod templates in a manifest offline; write YAML to stdout.

    Reads Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and Lists,
    in one or more YAML documents. Other kinds pass through unchanged. Warnings (stderr) are the
    webhook's: for a workload also the P/inject annotation on the workload instead of its pod
    template, as the webhook warns when the workload is applied.
    """
    fields: dict[str, Any] = {"default_policies": default_policies, "strict": strict,
                              "on_conflict": on_conflict, "kube_version": kube_version}
    if prefix:
        fields["prefix"] = prefix
    try:
        config = Settings(**fields).engine_config()
    except ValueError as exc:
        _fail(f"invalid option: {_first_error(exc)}", EXIT_USAGE)
    text = _read_input(source)
    try:
        policies = load_policy_dir(policies_dir or shipped_policies())
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_DENIED)
    ns_policies = parse_policy_list(namespace_policies) if namespace_policies is not None else None
    try:
        report = inject_text(text, source=_label(source), policies=policies, config=config,
                             namespace_policies=ns_policies, remove=remove,
                             pod_security=Level(pod_security) if pod_security else None,
                             namespace_labels=_labels(namespace_labels))
    except InputError as exc:
        _fail(str(exc), EXIT_USAGE)
    click.echo(report.output, nl=False)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    sys.exit(EXIT_DENIED if report.denied else 0)


def _label(source: str) -> str:
    return "<stdin>" if source == "-" else source


def _read_input(source: str) -> str:
    try:
        if source == "-":
            return sys.stdin.read()
        return Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        _fail(f"{source}: no such file", EXIT_USAGE)
    except IsADirectoryError:
        _fail(f"{source}: is a directory, not a manifest file", EXIT_USAGE)
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{_label(source)}: cannot read: {exc}", EXIT_USAGE)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# policies


@cli.group()
def policies() -> None:
    """Check and test policy files, print the policy JSON Schema."""


@policies.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--pod-security", type=click.Choice(["baseline", "restricted"]), default=None,
              help="Also inject each policy into a minimal pod that meets this Pod Security "
                   "level and report every violation the injection adds.")
def check(directory: Path, pod_security: str | None) -> None:
    """Validate every policy in DIRECTORY; print each problem as file:line: message.

    With --pod-security LEVEL, a policy whose injection would make a compliant pod break LEVEL
    is a problem too: `FILE:LINE: policy NAME breaks Pod Security level LEVEL: MESSAGE`.
    """
    try:
        loaded = load_policy_dir(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_DENIED)
    if pod_security is not None:
        problems = _pod_security_problems(loaded, Level(pod_security))
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            sys.exit(EXIT_DENIED)
    for name in loaded.names():
        selector = loaded[name].namespaces
        why = selector.contradiction() if selector is not None else None
        if why is not None:
            click.echo(f"warning: {loaded[name].source}: policy {name}: spec.namespaceSelector "
                       f"matches no namespace ({why}), so no pod can get it", err=True)
    names = ", ".join(loaded.names()) or "none"
    click.echo(f"{directory}: {len(loaded)} policies OK ({names})")


@policies.command("compile")
@_policies_option()
@_serve_option("--default-policies", help="The server's --default-policies, e.g. 'logging'.")
@_serve_option("--prefix", help="The server's --prefix [default: sidecar.company.com].")
@_serve_option("--strict/--no-strict", help="The server's --strict.")
@_serve_option("--on-conflict", type=click.Choice(["deny", "skip"]),
               help="The server's --on-conflict [default: deny].")
@click.option("--name", default="sidecar-injector", show_default=True,
              help="Name of the engine policy (the chart's fullname); the others derive from it.")
@click.option("--failure-policy", type=click.Choice(["Fail", "Ignore"]), default=None,
              help="What the apiserver does when the engine policy errs [default: Ignore with "
                   "--hybrid (the webhook then decides the pod), else Fail].")
@click.option("--pod-opt-in/--no-pod-opt-in", default=True, show_default=True,
              help="Also bind pods labelled P/inject=enabled in plain namespaces (the chart's "
                   "webhook.podOptIn).")
@click.option("--hybrid", is_flag=True,
              help="Compile what can be, and leave the pods that need the rest to the webhook.")
@click.option("--check-cluster", is_flag=True,
              help="First check that the cluster (--kubeconfig, else the in-cluster config) "
                   "serves MutatingAdmissionPolicy in admissionregistration.k8s.io/v1 "
                   "(Kubernetes 1.36+); exit 1 with why if not, 2 without access.")
@_serve_option("--kubeconfig", type=click.Path(path_type=Path),
               help="Kubeconfig for --check-cluster [default: in-cluster config].")
def compile_command(*, name: str, failure_policy: str | None, pod_opt_in: bool, hybrid: bool,
                    check_cluster: bool, **serve_flags: Any) -> None:
    """Write the policy set as admission policies the apiserver runs itself (Kubernetes 1.36+):
    a MutatingAdmissionPolicy, a ValidatingAdmissionPolicy for warnings (with --strict or
    --on-conflict deny, the default, one more for denials), and their bindings, as a YAML stream
    for `kubectl apply -f -`. The webhook's own namespace comes from POD_NAMESPACE, as for
    `serve`.

    What cannot be compiled is named on stderr, one line each (file: policy: reason), and exits
    1; with --hybrid the rest is written, and the pods that need what was not compiled are left
    to the webhook (exit 0). Without --hybrid, one warning line names the kinds of pods left to
    the webhook whatever they ask for (pod-level resources over 8Ti, too large for
    the CEL cost limits, ...). Invalid policies: file:line errors, exit 1.
    """
    settings = _settings(serve_flags, "invalid option")
    wrong_name = name_problem(name)
    if wrong_name is not None:
        _fail(f"--name {wrong_name}", EXIT_USAGE)
    if check_cluster:
        _check_cluster(settings.kubeconfig)
    try:
        loaded = load_policy_dir(settings.policies)
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_DENIED)
    config = settings.engine_config()
    if config.selection.own_namespace is None:
        click.echo("warning: POD_NAMESPACE is not set, so only the system namespaces are "
                   "excluded: set it to the webhook's namespace (the chart's release namespace)",
                   err=True)
    target = Target(name=name, own_namespace=config.selection.own_namespace,
                    pod_opt_in=pod_opt_in,
                    failure_policy=failure_policy or ("Ignore" if hybrid else "Fail"))
    compiled = compile_policies(loaded, config, target)
    for left in compiled.uncompiled:
        click.echo(f"{'left to the webhook' if hybrid else 'error'}: {left}", err=True)
    if compiled.uncompiled and not hybrid:
        sys.exit(EXIT_DENIED)
    if not hybrid:  # these depend on the pod, not on a policy: not an error, but not compiled
        click.echo(f"warning: left to the webhook, and admitted uninjected without one: "
                   f"{'; '.join(compiled.left_pods)} (docs/spec.md)", err=True)
    click.echo(compiled.yaml(), nl=False)


def _check_cluster(kubeconfig: Path | None) -> None:
    """Exit 1 unless the cluster serves what `compile` writes; 2 without cluster access."""
    from webhook.errors import ClusterError  # noqa: PLC0415 - the client loads only here
    from webhook.kube import Cluster  # noqa: PLC0415
    from webhook.sync import unserved  # noqa: PLC0415

    try:
        why = unserved(Cluster(kubeconfig))
    except ClusterError as exc:
        _fail(str(exc), EXIT_USAGE)
    if why is not None:
        _fail(why, EXIT_DENIED)


def _labels(text: str | None) -> dict[str, str] | None:
    """`--namespace-labels team=a,tier=web` as a map; a term without `=` is bad usage."""
    if text is None:
        return None
    labels = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key:
            _fail(f"--namespace-labels: {term!r} is not KEY=VALUE", EXIT_USAGE)
        labels[key.strip()] = value.strip()
    return labels


def _pod_security_problems(loaded: PolicySet, level: Level) -> list[str]:
    """Inject each policy alone into a pod that meets `level`; what that adds, per policy."""
    return [f"{loaded[name].source}: {problem}" for name in loaded.names()
            for problem in sample_pod_security(loaded, name, level)]


@policies.command()
@click.option("--test", "of_tests", is_flag=True,
              help="The schema of a `policies test` file (InjectionTest) instead.")
def schema(*, of_tests: bool) -> None:
    """Print the JSON Schema of a policy document (or, with --test, of a test file)."""
    click.echo(json.dumps(suite_schema() if of_tests else policy_schema(), indent=2,
                          sort_keys=False))


@policies.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--policies", "policies_dir", type=click.Path(path_type=Path), default=None,
              help="Test against this policies directory [default: each file's spec.policies, "
                   "else the shipped policies/].")
@click.option("--update", is_flag=True, help="Write the golden files with the current results.")
@click.option("--junit", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the results as JUnit XML to this file.")
def test_policies(*, paths: tuple[Path, ...], policies_dir: Path | None, update: bool,
                  junit: Path | None) -> None:
    """Run the InjectionTest files in PATHS (directories: every *.test.yaml in them).

    Each case injects a manifest as the webhook would and checks what came out. Exit 0 when
    every case passes, 1 when one fails, 2 when the tests or the policies are invalid (each
    problem as file:line: message).
    """
    try:
        cases = load_cases(find_test_files(paths), policies_dir=policies_dir)
    except SuiteError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    results = [run_case(case, update=update) for case in cases]
    for result in results:
        if not result.passed:
            click.echo(failure_text(result))
        elif result.updated:
            click.echo(f"updated {result.case.golden} (case {result.case.case.name!r})")
    if junit is not None:
        try:
            junit.write_text(junit_xml(results), encoding="utf-8")
        except OSError as exc:
            _fail(f"{junit}: cannot write: {exc.strerror or exc}", EXIT_USAGE)
    failed = sum(not result.passed for result in results)
    files = len({result.case.suite for result in results})
    click.echo(f"policies test: {len(results)} cases in {files} files, "
               f"{len(results) - failed} passed, {failed} failed")
    sys.exit(EXIT_DENIED if failed else 0)


# ---------------------------------------------------------------------------------------------
# drift


@cli.command()
@click.option("-n", "--namespace", default=None,
              help="Check this namespace's pods only [default: every opted-in namespace, and "
                   "the pods opted in by label elsewhere].")
@_serve_option("--kubeconfig", type=click.Path(path_type=Path),
               help="Kubeconfig of the cluster [default: the in-cluster config].")
@click.option("--policies", "policies_dir", type=click.Path(path_type=Path),
              envvar=f"{ENV_PREFIX}POLICIES", show_envvar=True,
              help="The policy directory the server serves (or a copy of it).")
@click.option("--release", default=None, metavar="NAME",
              help="Instead of --policies: the Helm release whose policies ConfigMap "
                   "(<fullname>-policies, in --release-namespace) the server serves.")
@click.option("--release-namespace", default="sidecar-injector", show_default=True,
              metavar="NS", help="The namespace of --release; also the webhook's own (never "
                                 "checked), unless POD_NAMESPACE names another.")
@_serve_option("--default-policies", help="The server's --default-policies, e.g. 'logging'.")
@_serve_option("--prefix", help="The server's --prefix [default: sidecar.company.com].")
@_serve_option("--strict/--no-strict", help="The server runs with --strict.")
@_serve_option("--on-conflict", type=click.Choice(["deny", "skip"]),
               help="The server's --on-conflict [default: deny].")
@_serve_option("--kube-version", help="Cluster version for sidecarMode: auto "
                                      "[default: the cluster's].")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True, help="A table for people, JSON or YAML for scripts.")
@click.option("--restart", is_flag=True,
              help="Restart the drifted Deployments, StatefulSets and DaemonSets as `kubectl "
                   "rollout restart` does; Jobs, CronJobs and bare pods are only listed.")
@click.option("--dry-run", is_flag=True,
              help="Show what --restart would restart (the apiserver checks each patch, "
                   "stores nothing); implies --restart.")
def drift(*, namespace: str | None, kubeconfig: Path | None, policies_dir: Path | None,
          release: str | None, release_namespace: str, output: str, restart: bool,
          dry_run: bool, **serve_flags: Any) -> None:
    """Find running pods whose injection is not what the server's policies give them now.

    Each pod of an opted-in namespace (or opted in by label) is un-injected as its status
    annotation records and injected again with the same engine as the server, in its
    namespace's context. Reported, by owning workload, with a reason: stale-revision,
    policy-removed, policies-changed, unstamped (never seen by the webhook), skip-outdated,
    would-deny, invalid-stamp. With --release, the server's --default-policies, --prefix,
    --strict, --on-conflict and --kube-version not given here are read from the release's
    Deployment, and its webhook configuration says whether pods opt in by label; with
    --policies, pass them (or its SIDECAR_INJECTOR_* variables).

    Exit 0 when nothing drifted, 1 when something did, 2 on bad usage, invalid policies or a
    cluster error (no access, unreachable, forbidden).
    """
    from webhook.errors import ClusterError  # noqa: PLC0415 - the client loads only here
    from webhook.kube import Cluster  # noqa: PLC0415
    from webhook.survey import Request, run  # noqa: PLC0415

    if (policies_dir is None) == (release is None):
        _fail("give either --policies DIR or --release NAME: the policies the server serves",
              EXIT_USAGE)
    given = {key: value for key, value in serve_flags.items() if value is not None}
    if kubeconfig is not None:
        given["kubeconfig"] = kubeconfig
    try:
        settings = Settings(**given)
    except ValueError as exc:
        _fail(f"invalid option: {_first_error(exc)}", EXIT_USAGE)
    request = Request(settings, namespace=namespace, policies_dir=policies_dir,
                      release=release, release_namespace=release_namespace,
                      output=output, restart=restart, dry_run=dry_run)  # type: ignore[arg-type]
    try:
        result = run(request, connect=Cluster, server_flags=server_flags_from_args)
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_USAGE)
    except ClusterError as exc:
        _fail(str(exc), EXIT_USAGE)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(result.text, nl=False)
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    sys.exit(result.exit_code)


# ---------------------------------------------------------------------------------------------
# certs


@cli.group()
def certs() -> None:
    """Make the webhook's certificates."""


@certs.command()
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Directory for ca.crt, ca.key, tls.crt, tls.key.")
@click.option("--service", required=True, help="The webhook's Service name.")
@click.option("--namespace", required=True, help="The webhook's namespace.")
@click.option("--days", default=365, show_default=True, type=int,
              help="Validity in days (1 to 36500).")
@click.option("--dns", "dns_names", multiple=True, metavar="NAME",
              help="An extra DNS name for the serving certificate, e.g. webhook.example.com or "
                   "*.dev.example.com. Repeatable.")
@click.option("--ip", "ip_addresses", multiple=True, metavar="ADDRESS",
              help="An extra IP address for the serving certificate, e.g. 10.0.0.5. Repeatable.")
def generate(*, out: Path, service: str, namespace: str, days: int,
             dns_names: tuple[str, ...], ip_addresses: tuple[str, ...]) -> None:
    """Write a CA and a serving pair for SERVICE.NAMESPACE.svc; print the base64 caBundle.

    The serving certificate is valid for SERVICE, SERVICE.NAMESPACE, SERVICE.NAMESPACE.svc,
    SERVICE.NAMESPACE.svc.cluster.local, localhost and 127.0.0.1, and for every --dns and --ip.
    Add those when the apiserver reaches the webhook by another name or address: the chart's
    webhook.url mode, a webhook run outside the cluster, an apiserver outside it. For example:

    \b
      sidecar-injector certs generate --out certs --service sidecar-injector \\
        --namespace sidecar-injector --dns webhook.dev.example.com --ip 10.0.0.5
    """
    try:
        bundle = generate_certs(out, service=service, namespace=namespace, days=days,
                                dns_names=dns_names, ip_addresses=ip_addresses)
    except CertificateError as exc:
        _fail(str(exc), EXIT_USAGE)
    click.echo(bundle)


def main() -> None:
    """Console-script entry point."""
    cli()
