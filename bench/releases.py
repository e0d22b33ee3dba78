#!/usr/bin/env python3
"""Benchmark of releases with `batou-remote` on 8 loopback sshd hosts (see docs/benchmarks.md).

Workload: one `release` root of 50 files of 1 MiB of random bytes (50 MiB that zstd cannot
shrink), on 8 hosts. Times, as medians of several runs:

- the first deploy (agent and bundle uploaded to every host, unpacked, activated),
- an unchanged re-deploy (nothing built again, nothing uploaded: the script checks it),
- a one-file change (one file's bytes changed: a new bundle built on the controller,
  uploaded to every host, unpacked beside the old release, activated),

and the bytes each run uploaded (from the `bundle ... uploaded: N bytes` events), beside the
floor: 8 parallel `scp -O` of the bundle to the same hosts, with the same ssh_config
(the legacy protocol: the loopback hosts run no SFTP subsystem).

Needs /usr/sbin/sshd (apt-get install -y openssh-server); traffic stays on 127.0.0.0/8.

Usage: bench/releases.py [--runs N] [--binary PATH]   (builds the release binary by default)
"""

import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from loopback_hosts import Cluster, build, exit_on_signals  # noqa: E402

HOSTS = 8
FILES = 50
MIB = 1 << 20


def environment(hosts):
    out = ['[environment]\nbase_dir = "srv"\n', f"jobs = {HOSTS}\n\n"]
    for h in hosts:
        out.append(f'[hosts.{h}]\ncomponents = ["app"]\n\n')
    out.append('[components.app]\ntype = "release"\nfiles = ["payload/"]\nkeep = 3\n')
    return "".join(out)


def deploy(cmd):
    """One deploy: seconds, bytes uploaded, whether anything changed."""
    start = time.perf_counter()
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"deploy failed:\n{out.stderr}\n{out.stdout[-4000:]}")
    uploaded, changed = 0, False
    for line in out.stdout.splitlines():
        event = json.loads(line)
        if event.get("event") == "changed":
            changed = True
        m = re.search(r"^bundle \w+ uploaded: (\d+) bytes", event.get("message", ""))
        if event.get("event") == "log" and m:
            uploaded += int(m.group(1))
    return seconds, uploaded, changed


def timed_parallel(cmds):
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{p.args} failed")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary")
    args = ap.parse_args()
    exit_on_signals()
    if not os.path.exists("/usr/sbin/sshd"):
        raise SystemExit("this benchmark needs OpenSSH's server: apt-get install -y openssh-server")
    binary = args.binary or os.path.join(build(ROOT, ["batou-remote"], release=True), "batou-remote")

    root = tempfile.mkdtemp(prefix="br", dir="/tmp")
    cluster = None
    try:
        names = [f"h{i + 1}" for i in range(HOSTS)]
        cluster = Cluster(root, names)
        project = os.path.join(root, "project")
        os.makedirs(os.path.join(project, "environments"))
        os.makedirs(os.path.join(project, "payload"))
        for i in range(FILES):
            with open(os.path.join(project, f"payload/part{i:02}.bin"), "wb") as f:
                f.write(os.urandom(MIB))
        with open(os.path.join(project, "environments/bench.toml"), "w") as f:
            f.write(environment(names))
        cmd = [binary, "bench", "-C", project, "--ssh-config", cluster.ssh_config]
        firsts, noops, changes, floors = [], [], [], []
        bytes_first = bytes_noop = bytes_change = 0
        for run in range(args.runs):
            for h in names:
                home = cluster.hosts[h][2]
                shutil.rmtree(os.path.join(home, "srv"), ignore_errors=True)
                shutil.rmtree(os.path.join(home, ".cache"), ignore_errors=True)
            seconds, bytes_first, _ = deploy(cmd)
            firsts.append(seconds)
            seconds, bytes_noop, changed = deploy(cmd)
            assert not changed and bytes_noop == 0, "an unchanged re-deploy changed or uploaded something"
            noops.append(seconds)
            with open(os.path.join(project, "payload/part00.bin"), "r+b") as f:
                f.write(os.urandom(64))
            seconds, bytes_change, changed = deploy(cmd)
            assert changed, "a one-file change changed nothing"
            changes.append(seconds)
            bundle = max(glob.glob(os.path.join(project, ".batou/bundles/*.tar.zst")), key=os.path.getmtime)
            floors.append(
                timed_parallel(
                    [["scp", "-O", "-q", "-F", cluster.ssh_config, bundle, f"{h}:floor.bin"] for h in names]
                )
            )
        size = os.path.getsize(bundle)
        ms = lambda xs: statistics.median(xs) * 1000
        mb = lambda b: b / 1e6
        print(f"release: {FILES} files x 1 MiB random, bundle {mb(size):.1f} MB; {HOSTS} hosts; {args.runs} runs; medians")
        print(f"{'what':<28} {'time':>10} {'uploaded':>12}")
        print(f"{'first deploy':<28} {ms(firsts):7.0f} ms {mb(bytes_first):9.1f} MB")
        print(f"{'unchanged re-deploy':<28} {ms(noops):7.0f} ms {mb(bytes_noop):9.1f} MB")
        print(f"{'one file changed':<28} {ms(changes):7.0f} ms {mb(bytes_change):9.1f} MB")
        print(f"{'8 x scp of the bundle':<28} {ms(floors):7.0f} ms {mb(size * HOSTS):9.1f} MB")
        print(f"one-file change / floor: {ms(changes) / ms(floors):.2f}x")
    finally:
        if cluster:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
