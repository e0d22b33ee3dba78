"""Real sshd processes on loopback playing hosts, for the benchmark and the remote demo.

Each host is its own `sshd -D` on 127.0.0.N with a generated host key and its own HOME
(`SetEnv`); the client side is a generated key, a known_hosts file and an ssh_config mapping
host names to addresses, with strict host key checking. Only 127.0.0.0/8 is used.
"""

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time


def build_agent(root):
    """Builds the static agents shipped to hosts (`scripts/build-agent`, which honours
    `CARGO_TARGET_DIR` too) and returns their directory; `batou-remote` finds them there."""
    out = subprocess.run(
        [os.path.join(root, "scripts/build-agent")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def build(root, packages, release=False):
    """Builds `packages` of the workspace at `root`; returns the directory of the binaries.

    The target directory is cargo's own answer (`cargo metadata`), so `CARGO_TARGET_DIR` and
    `build.target-dir` are honoured. A failed build raises before anything is started.
    """
    cmd = ["cargo", "build", "-q"] + (["--release"] if release else [])
    for package in packages:
        cmd += ["-p", package]
    if subprocess.run(cmd, cwd=root).returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed; nothing was started")
    out = subprocess.run(
        ["cargo", "metadata", "-q", "--format-version", "1", "--no-deps"],
        cwd=root, check=True, capture_output=True, text=True,
    )
    return os.path.join(json.loads(out.stdout)["target_directory"], "release" if release else "debug")


def exit_on_signals():
    """Turns SIGTERM and SIGHUP into `SystemExit`, so that `finally` blocks stop the hosts.

    SIGINT already raises `KeyboardInterrupt`; the default action of the others would end
    the script with its sshd processes still running.
    """
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def free_port(address):
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)


class Cluster:
    def __init__(self, root, names):
        self.root = root
        self.children = []
        self.hosts = {}
        try:
            self._start(names)
        except BaseException:
            # A host that did not come up must not leave the others running.
            self.stop()
            raise

    def _start(self, names):
        root = self.root
        key = os.path.join(root, "client_key")
        keygen(key)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)
        known, config = [], []
        for i, name in enumerate(names):
            address = f"127.0.0.{i + 2}"
            port = free_port(address)
            d = os.path.join(root, name)
            home = os.path.join(d, "home")
            os.makedirs(home)
            keygen(os.path.join(d, "host_key"))
            shutil.copy(key + ".pub", os.path.join(d, "authorized_keys"))
            with open(os.path.join(d, "sshd_config"), "w") as f:
                f.write(
                    f"ListenAddress {address}:{port}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
                    f"AuthorizedKeysFile {d}/authorized_keys\nUsePAM no\nStrictModes no\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "PermitRootLogin prohibit-password\nUseDNS no\nMaxSessions 64\n"
                    f"SetEnv HOME={home}\n"
                )
            with open(os.path.join(d, "host_key.pub")) as f:
                known.append(f"[{address}]:{port} " + " ".join(f.read().split()[:2]))
            config.append(
                f"Host {name}\n  HostName {address}\n  Port {port}\n  User {getpass.getuser()}\n"
                f"  IdentityFile {key}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {root}/known_hosts\n  StrictHostKeyChecking yes\n"
                "  BatchMode yes\n  LogLevel ERROR\n"
            )
            self.children.append(
                subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", os.path.join(d, "sshd_config"), "-E", os.path.join(d, "sshd.log")])
            )
            self.hosts[name] = (address, port, home)
        with open(os.path.join(root, "known_hosts"), "w") as f:
            f.write("\n".join(known) + "\n")
        self.ssh_config = os.path.join(root, "ssh_config")
        with open(self.ssh_config, "w") as f:
            f.write("\n".join(config))
        for address, port, _ in self.hosts.values():
            deadline = time.time() + 10
            while True:
                try:
                    socket.create_connection((address, port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.02)

    def stop(self):
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()
        self.children = []


