#!/usr/bin/env python3
"""Benchmark of `batou-remote` on many loopback sshd hosts (see docs/benchmarks.md).

Starts up to 48 real sshd processes on 127.0.0.2.. (own host keys, own HOME via SetEnv,
strict host key checking on the client side) and deploys the workload of `bench/remote.py`
(100 templated files, 4 directories, 10 symlinks per host) to them once. Then, for 8, 24 and
48 hosts, it times:

- a no-op deploy with `--jobs` equal to the number of hosts, and at 48 hosts also with
  `--jobs 8`;
- the floor: `ssh <host> true` to the same hosts in parallel, with the same ssh_config;

and reports the controller's peak resident memory (its own process, from `wait4`), and the
most file descriptors and child processes it held at once (sampled from /proc while it ran),
beside the limits of this shell (`RLIMIT_NOFILE`, `RLIMIT_NPROC`).

Needs /usr/sbin/sshd (apt-get install -y openssh-server) and sends traffic to 127.0.0.0/8
only.

Usage: bench/scale.py [--runs N] [--hosts N] [--binary PATH]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from loopback_hosts import Cluster, build, exit_on_signals  # noqa: E402
import remote  # noqa: E402


def children(pid):
    """The processes whose parent is `pid`."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return len(f.read().split())
    except OSError:
        return 0


def run_measured(cmd):
    """Runs `cmd`; returns (seconds, peak RSS in MiB, most fds, most children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = {"fds": 0, "children": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak["fds"] = max(peak["fds"], len(os.listdir(f"/proc/{proc.pid}/fd")))
            except OSError:
                pass
            peak["children"] = max(peak["children"], children(proc.pid))
            done.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024, peak["fds"], peak["children"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hosts", type=int, default=48)
    ap.add_argument("--binary")
    args = ap.parse_args()
    exit_on_signals()
    if not os.path.exists("/usr/sbin/sshd"):
        raise SystemExit("this benchmark needs OpenSSH's server: apt-get install -y openssh-server")
    binary = args.binary
    if not binary:
        binary = os.path.join(build(ROOT, ["batou-remote"], release=True), "batou-remote")

    root = tempfile.mkdtemp(prefix="bs", dir="/tmp")
    cluster = None
    try:
        names = [f"h{i + 1}" for i in range(args.hosts)]
        cluster = Cluster(root, names)
        project = os.path.join(root, "project")
        os.makedirs(os.path.join(project, "environments"))
        with open(os.path.join(project, "page.j2"), "w") as f:
            f.write(remote.TEMPLATE)
        counts = [c for c in (8, 24, 48) if c <= args.hosts]
        rows = []
        for count in counts:
            hosts = names[:count]
            # One environment that grows (8, then 24, then 48 hosts): a host's base directory
            # belongs to the environment that first deployed it.
            env = "scale"
            with open(os.path.join(project, f"environments/{env}.toml"), "w") as f:
                f.write(remote.environment(hosts))
            base = [binary, env, "-C", project, "--ssh-config", cluster.ssh_config]
            # The first deploy ships the agent and writes the files; not measured here.
            first = subprocess.run(base + ["--jobs", str(count)], capture_output=True, text=True)
            if first.returncode != 0:
                raise SystemExit(f"the first deploy to {count} hosts failed:\n{first.stderr[-3000:]}")
            floor_cmds = [["ssh", "-F", cluster.ssh_config, h, "true"] for h in hosts]
            variants = [count] + ([8] if count > 8 else [])
            for jobs in variants:
                samples, floors = [], []
                for _ in range(args.runs):
                    samples.append(run_measured(base + ["--jobs", str(jobs)]))
                    floors.append(remote.timed_parallel(floor_cmds))
                out = subprocess.run(base + ["--jobs", str(jobs), "--json"], check=True,
                                     capture_output=True, text=True)
                assert '"event":"changed"' not in out.stdout, "no-op deploy changed something"
                rows.append((count, jobs, samples, floors))

        med = lambda xs: statistics.median(xs)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)
        print(f"workload per host: {remote.FILES} files, {remote.DIRS} directories, "
              f"{remote.LINKS} symlinks; no-op deploys; {args.runs} runs; medians")
        print(f"limits here: RLIMIT_NOFILE {nofile[0]} (hard {nofile[1]}), RLIMIT_NPROC {nproc[0]}")
        print(f"{'hosts':>5} {'jobs':>4}  {'no-op':>9}  {'ssh true':>9}  {'ratio':>6}  "
              f"{'peak RSS':>9}  {'fds':>4}  {'children':>8}")
        for count, jobs, samples, floors in rows:
            noop = med([s[0] for s in samples]) * 1000
            floor = med(floors) * 1000
            rss = max(s[1] for s in samples)
            fds = max(s[2] for s in samples)
            kids = max(s[3] for s in samples)
            print(f"{count:>5} {jobs:>4}  {noop:6.1f} ms  {floor:6.1f} ms  {noop / floor:5.2f}x  "
                  f"{rss:6.1f} MiB  {fds:>4}  {kids:>8}")
        full = [r for r in rows if r[0] == r[1]]
        if len(full) >= 2:
            (c1, _, s1, _), (c2, _, s2, _) = full[0], full[-1]
            grow = (max(s[1] for s in s2) - max(s[1] for s in s1)) / (c2 - c1)
            print(f"controller memory per host ({c1} -> {c2} hosts): {grow:.2f} MiB")
    finally:
        if cluster:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
