"""A throw-away one-node SLURM cluster on localhost for tests/test_slurm.py.

Debian's slurmctld, slurmd, slurm-client and munge are installed with apt-get when they are
missing (root only). Every daemon runs in the foreground as a child of the test, with its own
munge key and socket, its own ports, state and spool dirs and its own slurm.conf (SLURM_CONF):
it reads nothing from /etc/slurm or /etc/munge, and a cluster already set up on the machine is
not touched. stop() cancels
the cluster's jobs, ends the daemons it started and any process still carrying its marker
variable (job steps), and removes its directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
# one program of each package
PROGRAMS = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client", "munged": "munge"}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
NODE = "localhost"
GPU_TYPE = "testgpu"


class CannotInstall(Exception):
    """This machine cannot install or run the cluster (not root, no apt-get)."""


def which(program: str) -> str | None:
    return shutil.which(program, path=SEARCH_PATH)


def missing_packages() -> list[str]:
    return sorted({pkg for prog, pkg in PROGRAMS.items() if which(prog) is None})


def ensure_installed(timeout: float = 300) -> str:
    """Install the missing Debian packages; returns what was done (for the test's output).

    Raises CannotInstall where the cluster cannot be had at all: not root (slurmd and apt-get
    need root) or SLURM missing and no apt-get.
    """
    if os.geteuid() != 0:
        raise CannotInstall("not root: slurmd and apt-get need root")
    missing = missing_packages()
    if not missing:
        return "already installed"
    apt = which("apt-get")
    if apt is None:
        raise CannotInstall(f"Debian packages {missing} are missing and there is no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=60", *PACKAGES]
    deadline = time.monotonic() + timeout
    log = []
    for attempt in ("install", "update", "install"):
        cmd = install if attempt == "install" else [apt, "update", "-q", "-o", "DPkg::Lock::Timeout=60"]
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"'{' '.join(cmd)}' did not finish within {timeout:.0f} s") from None
        log.append(f"$ {' '.join(cmd)} -> {res.returncode}\n{res.stdout[-1500:]}{res.stderr[-1500:]}")
        if attempt == "install" and res.returncode == 0 and not missing_packages():
            return f"installed {', '.join(PACKAGES)} with apt-get"
    raise RuntimeError("apt-get could not install SLURM:\n" + "\n".join(log))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SlurmCluster:
    """One node (NODE) in two partitions, cpu (default) and gpu, with one GRES gpu:GPU_TYPE.

    The node has no GPU: the GRES is backed by /dev/null (gres.conf, AutoDetect=off), which
    is enough for SLURM to accept and allocate --gpus requests and to record them.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"
        self.cpus = os.cpu_count() or 1
        # below the machine's memory: slurmd drains a node that has less than configured
        self.real_memory_mb = max(_mem_total_mb() - 512, 1)
        self.marker = f"AMDIFF_TEST_SLURM={self.root}"
        self.procs: dict[str, subprocess.Popen] = {}

    # -- environment --------------------------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        """Environment for client commands and the workflow run."""
        env = dict(os.environ if base is None else base)
        for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))]:
            env.pop(var)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}{os.pathsep}/usr/sbin"
        key, value = self.marker.split("=", 1)
        env[key] = value
        return env

    def run(self, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    # -- start --------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        try:
            self._write_files()
            self._spawn("munged", [which("munged"), "--foreground", "--force",
                                   f"--socket={self.munge_socket}", f"--key-file={self.root / 'munge/munge.key'}",
                                   f"--pid-file={self.root / 'munge/munged.pid'}",
                                   f"--log-file={self.root / 'log/munged.log'}",
                                   f"--seed-file={self.root / 'munge/munged.seed'}"])
            self._wait(lambda: self.munge_socket.exists(), 15, "munged did not create its socket")
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-i"])
            self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, timeout,
                       "slurmctld did not answer scontrol ping")
            self._spawn("slurmd", [which("slurmd"), "-D", "-N", NODE])
            self._wait(lambda: self.node_state() == "idle", timeout,
                       f"node {NODE} did not become idle (state {self.node_state()!r})")
        except BaseException:
            self.stop()
            raise

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge-run" / "munge.socket"

    def _write_files(self) -> None:
        for sub, mode in (("munge", 0o700), ("munge-run", 0o755), ("state", 0o700), ("spool", 0o755),
                          ("log", 0o755), ("bin", 0o755)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            (self.root / sub).chmod(mode)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r = self.root
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(f"""\
ClusterName=amdifftest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
# no cgroups in a container: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# no accounting (no slurmdbd): sacct cannot report jobs, squeue does while jobs are younger
# than MinJobAge after they end (and 'scontrol show job' lets the test read them afterwards)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.log
MinJobAge=900
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} Gres=gpu:{GPU_TYPE}:1 State=UNKNOWN
PartitionName=cpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={NODE} MaxTime=INFINITE State=UP
""")
        # a GPU GRES needs a device file; /dev/null stands in for the card
        (self.root / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu Type={GPU_TYPE} File=/dev/null\n")
        # Inside each job the slurm-jobstep plugin drops all SLURM_* variables, SLURM_CONF too,
        # before it calls srun; a cluster whose slurm.conf lives in /etc/slurm does not notice.
        # This cluster's conf is private, so srun gets it back here.
        srun = self.bin / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF='{self.conf}' exec '{which('srun')}' \"$@\"\n")
        srun.chmod(0o755)

    def _spawn(self, name: str, cmd: list) -> None:
        if None in cmd:
            raise RuntimeError(f"{name} is not installed")
        out = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    def _wait(self, ready, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{message} within {timeout:.0f} s\n{self.logs()}")

    def node_state(self) -> str:
        res = self.run("sinfo", "-h", "-n", NODE, "-o", "%t", check=False)
        return res.stdout.split()[0] if res.returncode == 0 and res.stdout.split() else ""

    # -- inspect ------------------------------------------------------------------------
    def jobs(self) -> list[dict]:
        """Every job slurmctld still holds (MinJobAge keeps ended ones), as key=value dicts."""
        out = self.run("scontrol", "show", "job", "-d").stdout
        records = []
        for block in re.split(r"\n\s*\n", out.strip()):
            if block.strip() and "JobId=" in block:
                records.append(dict(re.findall(r"(\S+?)=(\S*)", block)))
        return records

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            text = log.read_text(errors="replace")
            parts.append(f"--- {log.name} ---\n{text[-tail:]}")
        return "\n".join(parts)

    # -- stop ---------------------------------------------------------------------------
    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--full", "--user", "root", timeout=15, check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    res = self.run("squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i", timeout=15, check=False)
                    if res.returncode != 0 or not res.stdout.strip():
                        break
                    time.sleep(1)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._kill_marked()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_marked(self) -> None:
        """End leftovers that carry this cluster's marker (slurmstepd and job processes)."""
        marker = self.marker.encode() + b"\0"
        me = os.getpid()
        for _ in range(2):
            pids = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                try:
                    if marker in (entry / "environ").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    continue
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
