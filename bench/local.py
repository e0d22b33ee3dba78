#!/usr/bin/env python3
"""Benchmark of `batou-local` on a generated workload (see docs/benchmarks.md).

Workload: 20 directories, 500 files rendered from one template with 3 variables (~1 KB each)
and 50 symlinks, each a root component of one environment. Measures the first converge, the
no-op converge and the converge after 10 files' variables change, each as the median of
several runs, beside the median time of `cat`-ing the same 500 files (the floor of reading
them once), measured in the same run.

Usage: bench/local.py [--runs N] [--binary PATH]   (builds the release binary by default)
"""

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from loopback_hosts import build  # noqa: E402

DIRS, FILES, LINKS = 20, 500, 50

TEMPLATE = (
    "# {{ name }} on {{ host.name }}\n"
    "[service]\nname = \"{{ name }}\"\nport = {{ port }}\nowner = \"{{ owner }}\"\n"
    + "".join(f"# filler line {i:03d} to make the file about one kilobyte long ....\n" for i in range(14))
)


def environment(changed=()):
    out = ["[environment]\nconnect = \"local\"\n\n[hosts.localhost]\ncomponents = ["]
    names = [f"d{d:02}" for d in range(DIRS)] + [f"f{i:03}" for i in range(FILES)] + [
        f"l{i:02}" for i in range(LINKS)
    ]
    out.append(", ".join(f'"{n}"' for n in names))
    out.append("]\n\n")
    for d in range(DIRS):
        out.append(f'[components.d{d:02}]\ntype = "directory"\npath = "../site/d{d:02}"\n\n')
    for i in range(FILES):
        port = 8000 + i + (1000 if i in changed else 0)
        out.append(
            f'[components.f{i:03}]\ntype = "file"\npath = "../site/d{i % DIRS:02}/f{i:03}.conf"\n'
            f'template = "page.j2"\nvars = {{ name = "f{i:03}", port = {port}, owner = "team{i % 7}" }}\n\n'
        )
    for i in range(LINKS):
        out.append(
            f'[components.l{i:02}]\ntype = "symlink"\npath = "../site/links/l{i:02}"\n'
            f'target = "../d{i % DIRS:02}/f{i:03}.conf"\n\n'
        )
    # The links directory itself.
    out[0] = out[0].replace('components = [', 'components = ["links", ')
    out.append('[components.links]\ntype = "directory"\npath = "../site/links"\n')
    return "".join(out)


def timed(cmd, cwd):
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def write_floor(work, files, content):
    """The floor of a first converge: the same files written as temporary files, one sync
    of the file system, then renamed into place and their directories synced."""
    start = time.perf_counter()
    tmps = []
    for path in files:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, content)
        os.close(fd)
        tmps.append((tmp, path))
    fd = os.open(work, os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
        raise OSError(ctypes.get_errno(), "syncfs failed")
    os.close(fd)
    dirs = set()
    for tmp, path in tmps:
        os.rename(tmp, path)
        dirs.add(os.path.dirname(path))
    for d in sorted(dirs):
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--binary")
    args = ap.parse_args()
    binary = args.binary
    if not binary:
        binary = os.path.join(build(ROOT, ["batou-local"], release=True), "batou-local")

    work = tempfile.mkdtemp(prefix="batou-bench-")
    try:
        os.makedirs(os.path.join(work, "environments"))
        with open(os.path.join(work, "page.j2"), "w") as f:
            f.write(TEMPLATE)
        env_path = os.path.join(work, "environments/bench.toml")
        cmd = [binary, "bench"]

        firsts, noops, changes, cats, floors = [], [], [], [], []
        for _ in range(args.runs):
            shutil.rmtree(os.path.join(work, "work"), ignore_errors=True)
            with open(env_path, "w") as f:
                f.write(environment())
            firsts.append(timed(cmd, work))
            noops.append(timed(cmd, work))
            files = [
                os.path.join(work, f"work/site/d{i % DIRS:02}/f{i:03}.conf") for i in range(FILES)
            ]
            cats.append(timed(["cat", *files], work))
            floor_dir = os.path.join(work, "floor")
            shutil.rmtree(floor_dir, ignore_errors=True)
            with open(files[0], "rb") as f:
                content = f.read()
            floors.append(write_floor(
                floor_dir,
                [os.path.join(floor_dir, os.path.relpath(p, os.path.join(work, "work"))) for p in files],
                content,
            ))
            with open(env_path, "w") as f:
                f.write(environment(changed=range(0, FILES, FILES // 10)))
            changes.append(timed(cmd, work))
        # The no-op after the change must again change nothing.
        out = subprocess.run(cmd + ["--json"], cwd=work, check=True, capture_output=True, text=True)
        assert '"event":"changed"' not in out.stdout, "no-op converge changed something"

        ms = lambda xs: statistics.median(xs) * 1000
        size = sum(os.path.getsize(p) for p in files) / len(files)
        print(f"workload: {DIRS} directories, {FILES} files (~{size:.0f} bytes each), {LINKS} symlinks; {args.runs} runs")
        print(f"first converge         median {ms(firsts):8.1f} ms")
        print(f"write floor (1 sync)   median {ms(floors):8.1f} ms")
        print(f"first / write floor    {ms(firsts) / ms(floors):8.1f} x")
        print(f"no-op converge         median {ms(noops):8.1f} ms")
        print(f"10 files changed       median {ms(changes):8.1f} ms")
        print(f"cat of the 500 files   median {ms(cats):8.1f} ms")
        print(f"no-op / cat            {ms(noops) / ms(cats):8.1f} x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
