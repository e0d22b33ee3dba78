#!/usr/bin/env python3
"""Benchmark of `batou-remote` against loopback sshd hosts (see docs/benchmarks.md).

Starts 8 real sshd processes on 127.0.0.2..9 (own host keys, own HOME via SetEnv, strict
host key checking on the client side), then for 1, 4 and 8 hosts times:

- the first deploy (agent upload included) of a workload of 100 files rendered from one
  template with 3 variables (~1 KB each), 4 directories and 10 symlinks per host,
- a no-op re-deploy (connections, plan check, verify of every component, nothing changed),
- the floor: `ssh <host> true` to the same hosts in parallel, with the same ssh_config;
- the first deploy's floor: `scp` of the compressed agent to the same hosts in parallel.

Each figure is the median of several runs. Needs /usr/sbin/sshd (apt-get install -y
openssh-server) and sends traffic to 127.0.0.0/8 only.

Usage: bench/remote.py [--runs N] [--binary PATH]   (builds the release binary by default)
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from loopback_hosts import Cluster, build, build_agent, exit_on_signals  # noqa: E402
HOSTS = 8
DIRS, FILES, LINKS = 4, 100, 10

TEMPLATE = (
    "# {{ name }} on {{ host.name }}\n"
    "[service]\nname = \"{{ name }}\"\nport = {{ port }}\nowner = \"{{ owner }}\"\n"
    + "".join(f"# filler line {i:03d} to make the file about one kilobyte long ....\n" for i in range(14))
)


def environment(hosts):
    names = (
        [f"d{d}" for d in range(DIRS)]
        + ["links"]
        + [f"f{i:03}" for i in range(FILES)]
        + [f"l{i}" for i in range(LINKS)]
    )
    listed = ", ".join(f'"{n}"' for n in names)
    out = ['[environment]\nbase_dir = "srv"\n', f"jobs = {HOSTS}\n\n"]
    for h in hosts:
        out.append(f"[hosts.{h}]\ncomponents = [{listed}]\n\n")
    for d in range(DIRS):
        out.append(f'[components.d{d}]\ntype = "directory"\npath = "../site/d{d}"\n\n')
    out.append('[components.links]\ntype = "directory"\npath = "../site/links"\n\n')
    for i in range(FILES):
        out.append(
            f'[components.f{i:03}]\ntype = "file"\npath = "../site/d{i % DIRS}/f{i:03}.conf"\n'
            f'template = "page.j2"\nvars = {{ name = "f{i:03}", port = {8000 + i}, owner = "team{i % 7}" }}\n\n'
        )
    for i in range(LINKS):
        out.append(
            f'[components.l{i}]\ntype = "symlink"\npath = "../site/links/l{i}"\n'
            f'target = "../d{i % DIRS}/f{i:03}.conf"\n\n'
        )
    return "".join(out)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def root_cache():
    """Where batou-remote keeps compressed agents (it writes the file on its first run)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "batou", "compressed")


def timed(cmd, cwd=None):
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def timed_parallel(cmds):
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{p.args} failed")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--binary")
    args = ap.parse_args()
    exit_on_signals()
    if not os.path.exists("/usr/sbin/sshd"):
        raise SystemExit("this benchmark needs OpenSSH's server: apt-get install -y openssh-server")
    binary = args.binary
    if not binary:
        binary = os.path.join(build(ROOT, ["batou-remote"], release=True), "batou-remote")
    agent_dir = build_agent(ROOT)
    os.environ["BATOU_AGENT_DIR"] = agent_dir
    compressed = os.path.join(root_cache(), f"{sha256(os.path.join(agent_dir, 'batou-agent'))}.zst")

    root = tempfile.mkdtemp(prefix="bb", dir="/tmp")
    cluster = None
    try:
        cluster = Cluster(root, [f"h{i + 1}" for i in range(HOSTS)])
        project = os.path.join(root, "project")
        os.makedirs(os.path.join(project, "environments"))
        with open(os.path.join(project, "page.j2"), "w") as f:
            f.write(TEMPLATE)
        results = []
        for count in (1, 4, 8):
            hosts = [f"h{i + 1}" for i in range(count)]
            env = f"bench{count}"
            with open(os.path.join(project, f"environments/{env}.toml"), "w") as f:
                f.write(environment(hosts))
            cmd = [binary, env, "-C", project, "--ssh-config", cluster.ssh_config]
            floor_cmds = [["ssh", "-F", cluster.ssh_config, h, "true"] for h in hosts]
            # The first deploy's floor: the compressed agent copied to every host at once.
            scp_cmds = [["scp", "-O", "-q", "-F", cluster.ssh_config, compressed, f"{h}:agent.zst"] for h in hosts]
            firsts, noops, floors, scps = [], [], [], []
            for _ in range(args.runs):
                for h in hosts:
                    home = cluster.hosts[h][2]
                    shutil.rmtree(os.path.join(home, "srv"), ignore_errors=True)
                    shutil.rmtree(os.path.join(home, ".cache"), ignore_errors=True)
                firsts.append(timed(cmd))
                noops.append(timed(cmd))
                floors.append(timed_parallel(floor_cmds))
                scps.append(timed_parallel(scp_cmds))
            out = subprocess.run(cmd + ["--json"], check=True, capture_output=True, text=True)
            assert '"event":"changed"' not in out.stdout, "no-op deploy changed something"
            assert '"event":"agent_uploaded"' not in out.stdout, "no-op deploy uploaded the agent"
            results.append((count, firsts, noops, floors, scps))

        ms = lambda xs: statistics.median(xs) * 1000
        print(
            f"workload per host: {FILES} files (~1 KB, one template, 3 variables), {DIRS} directories, "
            f"{LINKS} symlinks; {args.runs} runs; medians"
        )
        agent = os.path.getsize(os.path.join(agent_dir, "batou-agent"))
        unpack = os.path.getsize(os.path.join(agent_dir, "batou-unpack"))
        print(
            f"agent: {agent / 1e6:.2f} MB static, {os.path.getsize(compressed) / 1e6:.2f} MB compressed; "
            f"batou-unpack {unpack / 1e6:.2f} MB (sent once per host, uncompressed)"
        )
        print(
            f"{'hosts':>5}  {'first deploy':>12}  {'scp agent':>9}  {'first / scp':>11}  "
            f"{'no-op':>9}  {'ssh true':>9}  {'no-op / ssh true':>16}"
        )
        for count, firsts, noops, floors, scps in results:
            print(
                f"{count:>5}  {ms(firsts):9.1f} ms  {ms(scps):6.1f} ms  {ms(firsts) / ms(scps):10.2f}x  "
                f"{ms(noops):6.1f} ms  {ms(floors):6.1f} ms  {ms(noops) / ms(floors):15.2f}x"
            )
    finally:
        if cluster:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
