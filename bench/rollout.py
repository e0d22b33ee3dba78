#!/usr/bin/env python3
"""Benchmark of a rolling deploy with `batou-remote` (see docs/benchmarks.md).

Workload: examples/rollout on loopback (bench uses its `Loopback` setup): four app hosts,
each a runit-supervised Python HTTP server run from a `release`, behind a real nginx on a
balancer host. A new release is rolled out one host per batch (`batch = 1`, four batches),
with a health check that must stay good for `stable = 1s` after each restart, while a load
loop sends requests through nginx. Measured, as medians of several runs:

- the rollout's wall time,
- the sum of the health windows: per batch, the longest `web` step (restart and health
  check) of its hosts, summed over the batches; and the floor under it, the batches times
  the configured `stable` window, which no rollout of these batches can go below,
- the overhead: wall time minus the sum of the health windows (connections, predictions,
  the balancer's drain and undrain with nginx reloads, the drain wait, the release steps),
- the requests answered and failed during the rollout (failed must be 0).

Needs sshd, runit and nginx (apt-get install -y openssh-server runit nginx); traffic stays
on 127.0.0.0/8.

Usage: bench/rollout.py [--runs N] [--binary PATH]   (builds the release binary by default)
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "examples", "rollout"))
from loopback_hosts import build, exit_on_signals  # noqa: E402
from run import APPS, Load, Loopback  # noqa: E402

STABLE = 1.0


def health_windows(events):
    """Per batch, the longest `web` step of its hosts, summed; and the number of batches."""
    batch_of = {}
    for e in events:
        if e.get("event") == "rollout_batch":
            for h in e["hosts"]:
                batch_of[h] = e["batch"]
    longest = {}
    for e in events:
        if e.get("event") == "step_finished" and e["component"] == "web":
            b = batch_of[e["host"]]
            longest[b] = max(longest.get(b, 0.0), e["seconds"])
    return sum(longest.values()), len(set(batch_of.values()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary")
    args = ap.parse_args()
    exit_on_signals()
    binary = args.binary or os.path.join(build(ROOT, ["batou-remote"], release=True), "batou-remote")
    root = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    lo = None
    try:
        lo = Loopback(root, binary, stable=f"{STABLE}s", batch="1")
        lo.site("v0")
        code, _, _, err = lo.deploy()
        if code != 0:
            raise SystemExit(f"the first deploy failed:\n{err}")
        walls, windows, answered, failed = [], [], [], []
        batches = 0
        for run in range(args.runs):
            lo.site(f"v{run + 1}")
            load = Load(lo.listen)
            code, events, seconds, err = lo.deploy()
            ok, bad = load.stop()
            if code != 0:
                raise SystemExit(f"the rollout failed:\n{err}")
            window, batches = health_windows(events)
            walls.append(seconds)
            windows.append(window)
            answered.append(len(ok))
            failed.append(len(bad))
        wall, window = statistics.median(walls), statistics.median(windows)
        print(f"rollout: {len(APPS)} hosts, {batches} batches of 1, stable = {STABLE:.0f} s; {args.runs} runs; medians")
        print(f"{'what':<36} {'seconds':>8}")
        print(f"{'rollout wall time':<36} {wall:8.2f}")
        print(f"{'sum of the health windows':<36} {window:8.2f}")
        print(f"{'floor: batches x stable':<36} {batches * STABLE:8.2f}")
        print(f"{'overhead (wall - health windows)':<36} {wall - window:8.2f}")
        print(f"per batch overhead: {(wall - window) / batches:.2f} s")
        print(f"requests during the rollouts: {sum(answered)} answered, {sum(failed)} failed")
        if sum(failed):
            raise SystemExit("requests failed during a rollout")
    finally:
        if lo:
            lo.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
