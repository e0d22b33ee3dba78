#!/usr/bin/env python3
"""Plan-only benchmark of a large generated environment (see docs/benchmarks.md).

Workload: the shop's deployment binary (`examples/shop`, release build) plans a generated
environment of N hosts (1,000 by default) with 20 root components each: one `database` host
that provides the `database` resource, N-1 hosts whose `app` requires it (a resource across
hosts for every one of them), and 19 templated `file` components on every host. Nothing is
contacted: the binary's `plan` role configures every (host, root component) step, resolves
the resources, orders the plan and prints the remote plan (every host's job) as JSON, which
is what a controller does before the first connection.

Reported: the median wall time and peak memory of `plan`, beside the floor of reading and
parsing the same environment file with Python's `tomllib`, measured in the same run.

Usage: bench/plan.py [--hosts N] [--runs N] [--binary PATH]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from loopback_hosts import build  # noqa: E402

FILES = 19


def environment(hosts):
    out = ['[environment]\nconnect = "ssh"\nbase_dir = "srv"\n\n']
    files = ", ".join(f'"f{i:02}"' for i in range(FILES))
    out.append(f'[hosts.db]\ncomponents = ["database", {files}]\n\n')
    for h in range(1, hosts):
        out.append(
            f'[hosts.web{h:04}]\naddress = "127.0.0.1"\ncomponents = ["app", {files}]\n'
            f'data = {{ rack = "r{h % 40:02}" }}\n\n'
        )
    out.append('[components.app]\nport = 8080\nworkers = 4\n\n')
    out.append('[components.database]\nname = "shop"\n\n')
    for i in range(FILES):
        out.append(
            f'[components.f{i:02}]\ntype = "file"\npath = "etc/f{i:02}.conf"\n'
            f'content = "# f{i:02} on {{{{ host.name }}}}\\nvalue = {i}\\n"\n\n'
        )
    return "".join(out)


def timed(cmd, cwd):
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def parse_floor(path):
    start = time.perf_counter()
    with open(path, "rb") as f:
        tomllib.load(f)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--binary")
    args = ap.parse_args()
    binary = args.binary
    if not binary:
        out = build(ROOT, ["shop-deployment"], release=True)
        binary = os.path.join(out, "shop-deployment")

    work = tempfile.mkdtemp(prefix="batou-bench-plan-")
    try:
        shutil.copytree(os.path.join(ROOT, "examples/shop/components"), os.path.join(work, "components"))
        os.makedirs(os.path.join(work, "environments"))
        env_path = os.path.join(work, "environments/big.toml")
        with open(env_path, "w") as f:
            f.write(environment(args.hosts))
        # `plan` skips nothing a deploy would check; run it once to see that it succeeds.
        cmd = [binary, "plan", "big", work]
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
        plans, floors = [], []
        for _ in range(args.runs):
            plans.append(timed(cmd, work))
            floors.append(parse_floor(env_path))
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        ms = lambda xs: statistics.median(xs) * 1000
        steps = args.hosts * (FILES + 1)
        size = os.path.getsize(env_path) / 1024
        print(f"workload: {args.hosts} hosts x {FILES + 1} root components = {steps} steps, "
              f"{args.hosts - 1} cross-host requirements; environment {size:.0f} KiB; {args.runs} runs")
        print(f"plan (release)                  median {ms(plans):8.1f} ms")
        print(f"parse the environment (tomllib) median {ms(floors):8.1f} ms")
        print(f"plan / parse                    {ms(plans) / ms(floors):8.1f} x")
        print(f"peak memory of plan             {peak / 1024:8.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
