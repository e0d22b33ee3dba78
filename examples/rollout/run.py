#!/usr/bin/env python3
"""Runs examples/rollout on this machine: four app hosts and a balancer host as loopback
sshd processes (127.0.0.2-6), a runsvdir per app host, and a real nginx on 127.0.0.1,
all stopped again at the end. Traffic stays on 127.0.0.0/8.

It deploys v1, then rolls v2 out batch by batch while a load loop sends requests through
nginx (and counts the failed ones: none), then a v3 whose health check fails on the canary
(the rollout stops there, the other hosts keep v2), then v2 again. bench/rollout.py uses
the same setup (`Loopback`).

Needs sshd, runit, nginx and python3:
    apt-get install -y openssh-server runit nginx

Usage: examples/rollout/run.py [--binary PATH]   (builds batou-remote by default)
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from loopback_hosts import Cluster, build, exit_on_signals, free_port  # noqa: E402

APPS = ["app1", "app2", "app3", "app4"]
NGINX = "/usr/sbin/nginx"


def wait_for(what, check, seconds=10):
    deadline = time.time() + seconds
    while not check():
        if time.time() > deadline:
            raise SystemExit(f"{what} within {seconds} s: no")
        time.sleep(0.02)


def answers(address, port):
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def get(port):
    """`GET /` through nginx, one connection per request: the body, or raises."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        return body.strip()
    finally:
        conn.close()


class Load:
    """Requests through nginx in a thread until stopped (at most `seconds`)."""

    def __init__(self, port, seconds=300):
        self.ok, self.failed = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, time.time() + seconds))
        self._thread.start()

    def _run(self, port, deadline):
        while not self._stop.is_set() and time.time() < deadline:
            try:
                self.ok.append(get(port))
            except (OSError, http.client.HTTPException) as e:
                self.failed.append(str(e))
            time.sleep(0.005)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.ok, self.failed


class Loopback:
    """The example's hosts, supervisors, nginx and a copy of the project, on loopback."""

    def __init__(self, root, binary, stable="300ms", batch='[1, "50%"]'):
        self.root, self.binary = root, binary
        self.children = []
        self.cluster = None
        try:
            self._start(stable, batch)
        except BaseException:
            self.stop()
            raise

    def _start(self, stable, batch):
        root = self.root
        os.makedirs(os.path.join(root, "hosts"))
        self.cluster = Cluster(os.path.join(root, "hosts"), APPS + ["lb"])
        # The environment gives each host its loopback address; ssh finds its settings
        # under the address as well as under the name.
        with open(self.cluster.ssh_config) as f:
            config = f.read()
        for name, (address, _, _) in self.cluster.hosts.items():
            config = config.replace(f"Host {name}\n", f"Host {name} {address}\n")
        with open(self.cluster.ssh_config, "w") as f:
            f.write(config)
        self.service_dirs = {}
        for name in APPS:
            d = os.path.join(root, "runit", name)
            os.makedirs(d)
            self.service_dirs[name] = d
            self.children.append(subprocess.Popen(["runsvdir", "-P", d], start_new_session=True))
        n = os.path.join(root, "nginx")
        os.makedirs(os.path.join(n, "sites"))
        os.makedirs(os.path.join(n, "tmp"))
        temp = "".join(f"  {t}_temp_path {n}/tmp/{t};\n" for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
        status = free_port("127.0.0.1")
        with open(os.path.join(n, "nginx.conf"), "w") as f:
            f.write(
                f"daemon off;\npid {n}/nginx.pid;\nerror_log {n}/error.log;\nevents {{ worker_connections 256; }}\n"
                f"http {{\n  access_log off;\n{temp}  server {{ listen 127.0.0.1:{status}; return 200 \"up\\n\"; }}\n"
                f"  include {n}/sites/*.conf;\n}}\n"
            )
        self.nginx_dir = n
        self.children.append(
            subprocess.Popen([NGINX, "-p", n, "-e", f"{n}/error.log", "-c", f"{n}/nginx.conf"])
        )
        wait_for("nginx answers", lambda: answers("127.0.0.1", status))
        self.port = free_port("127.0.0.2")
        self.listen = free_port("127.0.0.1")
        self.project = os.path.join(root, "project")
        os.makedirs(os.path.join(self.project, "environments"))
        shutil.copytree(os.path.join(HERE, "site"), os.path.join(self.project, "site"))
        shutil.copy(os.path.join(HERE, "upstreams.conf.j2"), self.project)
        self.write_env(stable, batch)

    def write_env(self, stable, batch):
        hosts = self.cluster.hosts
        allow = [f'"{d}"' for d in self.service_dirs.values()] + [f'"{self.nginx_dir}"']
        text = [f'[environment]\nbase_dir = "srv"\njobs = 8\nallow_paths = [{", ".join(allow)}]\n\n']
        for name in APPS:
            text.append(
                f'[hosts.{name}]\naddress = "{hosts[name][0]}"\ncomponents = ["app", "web"]\n'
                f'data = {{ service_dir = "{self.service_dirs[name]}" }}\n\n'
            )
        n = self.nginx_dir
        text.append(f"""[hosts.lb]
address = "{hosts['lb'][0]}"
components = ["upstreams"]

[rollout]
component = "app"
batch = {batch}
max_failed = 0
balancer = "upstreams"
drain_wait = "300ms"

[components.app]
type = "release"
files = ["site/"]

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{self.port}", "--bind", "{{{{ host.address }}}}"]
cwd = "{{{{ releases.app.current }}}}/site"
restart_on = ["app"]
health = {{ http = "http://{{{{ host.address }}}}:{self.port}/ok.txt", within = "5s", stable = "{stable}" }}

[components.upstreams]
type = "nginx_site"
path = "{n}/sites/apps.conf"
template = "upstreams.conf.j2"
vars = {{ port = {self.port}, listen = "127.0.0.1:{self.listen}" }}
config = "{n}/nginx.conf"
prefix = "{n}"
""")
        with open(os.path.join(self.project, "environments/loopback.toml"), "w") as f:
            f.write("".join(text))

    def site(self, version, healthy=True):
        with open(os.path.join(self.project, "site/index.html"), "w") as f:
            f.write(version + "\n")
        ok = os.path.join(self.project, "site/ok.txt")
        if healthy:
            with open(ok, "w") as f:
                f.write("ok\n")
        elif os.path.exists(ok):
            os.remove(ok)

    def deploy(self, *args):
        """One deploy with `--json`: exit code, events, seconds."""
        cmd = [self.binary, "loopback", "-C", self.project, "--ssh-config", self.cluster.ssh_config, "--json", *args]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        return out.returncode, events, seconds, out.stderr

    def stop(self):
        for child in reversed(self.children):
            if child.poll() is None:
                # runsvdir ends its runsv processes (and their services) on SIGHUP.
                child.send_signal(signal.SIGHUP if child.args[0] == "runsvdir" else signal.SIGTERM)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children = []
        if self.cluster:
            self.cluster.stop()


def show(events):
    for e in events:
        kind = e.get("event")
        if kind == "rollout_batch":
            print(f"  batch {e['batch']}/{e['batches']}: {', '.join(e['hosts'])} ({e['failed']} failed, max {e['max_failed']})")
        elif kind == "rollout_hook":
            print(f"    {e['hook']} {', '.join(e['targets'])} -> in rotation: {', '.join(e['in_rotation']) or 'none'}")
        elif kind == "rollout_stopped":
            print(f"  rollout stopped after batch {e['batch']}: {e['reason']}")
        elif kind == "run_finished":
            for h in e["hosts"]:
                print(f"  {h['host']:5} {h['status']:14} {h['detail']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary")
    args = ap.parse_args()
    exit_on_signals()
    for tool in ["/usr/sbin/sshd", NGINX, shutil.which("runsvdir") or "/usr/bin/runsvdir"]:
        if not os.path.exists(tool):
            raise SystemExit(f"this example needs {tool}: apt-get install -y openssh-server runit nginx")
    binary = args.binary or os.path.join(build(ROOT, ["batou-remote"]), "batou-remote")
    root = tempfile.mkdtemp(prefix="ro", dir="/tmp")
    lo = None
    try:
        lo = Loopback(root, binary)
        print("v1, first deploy:")
        lo.site("v1")
        code, events, _, err = lo.deploy()
        show(events)
        if code != 0:
            raise SystemExit(err)
        print("v2, rolled under load:")
        lo.site("v2")
        load = Load(lo.listen)
        code, events, seconds, err = lo.deploy()
        ok, failed = load.stop()
        show(events)
        print(f"  {len(ok)} requests answered, {len(failed)} failed, in {seconds:.1f} s")
        print("v3, unhealthy:")
        lo.site("v3", healthy=False)
        code, events, _, _ = lo.deploy()
        show(events)
        print(f"  exit {code}; nginx answers {get(lo.listen)!r}")
        print("v2 again, then once more (nothing changes):")
        lo.site("v2")
        for _ in range(2):
            code, events, _, _ = lo.deploy()
            changed = [e["component"] for e in events if e.get("event") == "changed"]
            print(f"  exit {code}; changed: {', '.join(changed) or 'nothing'}")
    finally:
        if lo:
            lo.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
