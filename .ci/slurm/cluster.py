#!/usr/bin/env python3
"""A real single-machine SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) for tests and CI.

Everything lives under one cluster directory DIR; nothing outside it is written or started,
except the Debian packages that `install` adds::

    DIR/cluster.json          what `up` chose: cluster name, partitions, CPUs, ports
    DIR/etc/slurm.conf        every client needs SLURM_CONF=DIR/etc/slurm.conf
    DIR/etc/slurmdbd.conf     mode 600, beside slurm.conf (slurmdbd looks for it there)
    DIR/etc/my.cnf            MariaDB server + client options (private socket, port, datadir)
    DIR/munge/{etc,run,lib}   private munge key (dir 700, key 400), socket (dir 755), seed
    DIR/db/                   MariaDB datadir and socket
    DIR/state/, DIR/spool/    slurmctld StateSaveLocation, slurmd SlurmdSpoolDir
    DIR/log/                  one log per daemon (`<daemon>.log`, plus `<daemon>.out` for stdout/stderr)
    DIR/pids/<daemon>.pid     "<pid> <start time in clock ticks>" of each daemon `up` started

`down` stops exactly the processes named in DIR/pids (SIGTERM, wait, SIGKILL), checking each
pid's start time first so that a recycled pid is never signalled. Jobs still queued or running
are cancelled through `scancel` before the daemons stop.

The cluster: node `localhost` (127.0.0.1) with `cpus` CPUs and RealMemory = MemTotal - 2 GiB;
a second node `node2`, another slurmd on this machine (`slurmd -N node2`, NodeHostname=localhost,
its own Port; Slurm 22.05's Debian build has MULTIPLE_SLURMD) declaring the same CPUs and memory;
partition `multi` (both nodes, for `--nodes 2` jobs); partition `debug` (default, PriorityTier 1, preemptable by requeue with a GraceTime) and partition
`urgent` (PriorityTier 2) whose jobs preempt `debug` jobs. Preempted jobs receive their
`--signal` (submitit: USR2) at once (`SlurmctldParameters=preempt_send_user_signal`), which is
what submitit's Checkpointable needs to checkpoint and requeue itself. Accounting goes through
slurmdbd to MariaDB, so `sacct` knows every job's final state (submitit relies on it).

Command line::

    python .ci/slurm/cluster.py install              # apt-get install the packages if missing (root)
    python .ci/slurm/cluster.py up --dir DIR [--install] [--timeout S]
    python .ci/slurm/cluster.py env --dir DIR        # prints `export SLURM_CONF=...`
    python .ci/slurm/cluster.py status --dir DIR
    python .ci/slurm/cluster.py down --dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
# Executables the cluster needs, each with the Debian package that ships it.
BINARIES = {
    "munged": "munge",
    "munge": "munge",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "mariadb-admin": "mariadb-server",
    "mariadb": "mariadb-server",
    "slurmdbd": "slurmdbd",
    "slurmctld": "slurm-wlm",
    "slurmd": "slurm-wlm",
    "sbatch": "slurm-wlm",
    "srun": "slurm-wlm",
    "sacct": "slurm-wlm",
    "sacctmgr": "slurm-wlm",
}
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmd2")  # start order; stopped in reverse
CLUSTER_NAME = "vqflow"
PARTITION = "debug"
URGENT_PARTITION = "urgent"
GRACE_TIME_S = 30  # preempted debug jobs get this long to checkpoint and requeue themselves
KILL_WAIT_S = 5  # SIGTERM -> SIGKILL delay when Slurm ends a job
# Lifetime of job-step credentials; a requeued job also waits this long before it may start again
# (Slurm's default, 120 s, would make every requeue take two minutes).
CRED_EXPIRE_S = 10
SCHED_INTERVAL_S = 2  # main and backfill scheduler passes (defaults 60 s and 30 s) start requeued jobs
NODE = "localhost"
NODE2 = "node2"  # a second node daemon on this machine (slurmd -N node2, its own port)
MULTI_PARTITION = "multi"  # both nodes: multi-node jobs (--nodes 2)
DB_NAME = "slurm_acct_db"
DB_USER = "slurm"
LOG_TAIL_LINES = 40
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, NUL included


class ClusterError(RuntimeError):
    """The cluster could not be installed, started, queried or stopped; the message says why."""


@dataclass(frozen=True)
class Cluster:
    """A live SLURM cluster as its clients see it.

    conf: path of slurm.conf; `env` ({"SLURM_CONF": conf}) is what every client command needs.
    partition: the default partition. urgent_partition: a partition whose jobs preempt
    `partition` jobs by requeue, or None when the cluster has none. cpus: CPUs of the node.
    """

    conf: Path
    partition: str
    urgent_partition: str | None
    cpus: int

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run a client command (sinfo, sacct, scontrol, ...) against this cluster; returns its output."""
        return _run(list(argv), env={**os.environ, **self.env}, timeout=timeout, check=check)


@dataclass(frozen=True)
class Layout:
    """Paths of one cluster directory (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        if not self.root.is_absolute():
            object.__setattr__(self, "root", self.root.resolve())
        if any(c.isspace() for c in str(self.root)):
            raise ClusterError(f"cluster directory {self.root!s} contains whitespace; Slurm configs cannot quote it")
        longest = max(self.munge_socket, self.db_socket, key=lambda p: len(str(p)))
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise ClusterError(
                f"cluster directory {self.root!s} is too long: socket path {longest} is over "
                f"{MAX_SOCKET_PATH} characters (the limit of a unix socket address)"
            )

    etc = property(lambda self: self.root / "etc")
    conf = property(lambda self: self.root / "etc" / "slurm.conf")
    dbd_conf = property(lambda self: self.root / "etc" / "slurmdbd.conf")
    my_cnf = property(lambda self: self.root / "etc" / "my.cnf")
    munge_key = property(lambda self: self.root / "munge" / "etc" / "munge.key")
    munge_socket = property(lambda self: self.root / "munge" / "run" / "munge.socket")
    munge_seed = property(lambda self: self.root / "munge" / "lib" / "munged.seed")
    db_data = property(lambda self: self.root / "db" / "data")
    db_socket = property(lambda self: self.root / "db" / "mysqld.sock")
    db_tmp = property(lambda self: self.root / "db" / "tmp")  # private: bootstraps collide in a shared /tmp
    state = property(lambda self: self.root / "state")
    spool = property(lambda self: self.root / "spool")
    logs = property(lambda self: self.root / "log")
    pids = property(lambda self: self.root / "pids")
    info = property(lambda self: self.root / "cluster.json")

    def log(self, daemon: str) -> Path:
        node = {"slurmd": NODE, "slurmd2": NODE2}.get(daemon)  # SlurmdLogFile is per node (%n)
        return self.logs / (f"slurmd-{node}.log" if node else f"{daemon}.log")

    def out(self, daemon: str) -> Path:
        return self.logs / f"{daemon}.out"

    def pid_file(self, daemon: str) -> Path:
        return self.pids / f"{daemon}.pid"


@dataclass
class Settings:
    """What `up` chooses once per bring-up: free TCP ports, CPUs, memory, the DB password."""

    cpus: int
    real_memory_mb: int
    ports: dict[str, int]
    db_password: str
    user: str = field(default_factory=lambda: pwd.getpwuid(os.geteuid()).pw_name)

    @classmethod
    def choose(cls, cpus: int | None) -> Settings:
        available = os.cpu_count() or 1
        cpus = min(2, available) if cpus is None else cpus
        if not 1 <= cpus <= available:
            raise ClusterError(f"cpus={cpus} is outside 1..{available} (CPUs of this machine)")
        mem_mb = _mem_total_mb() - 2048
        if mem_mb < 512:
            raise ClusterError(f"MemTotal - 2 GiB = {mem_mb} MB leaves no memory for a SLURM node")
        ports = dict(zip(("slurmctld", "slurmd", "slurmd2", "slurmdbd", "mariadbd"), _free_ports(5)))
        return cls(cpus=cpus, real_memory_mb=mem_mb, ports=ports, db_password=secrets.token_hex(12))


# --------------------------------------------------------------------------------------------
# packages


def missing_packages() -> list[str]:
    """Debian packages whose executables are not on PATH (sbin included), in PACKAGES order."""
    missing = {pkg for exe, pkg in BINARIES.items() if _which(exe) is None}
    return [pkg for pkg in PACKAGES if pkg in missing]


def install_packages(timeout: float = 900.0) -> None:
    """`apt-get install -y` the missing PACKAGES, non-interactively (needs root and apt-get).

    Runs `apt-get update` and retries once if the first install fails (fresh images have no lists).
    """
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"packages {missing} are missing and installing them needs root")
    if shutil.which("apt-get") is None:
        raise ClusterError(f"packages {missing} are missing and apt-get is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    first = _run(install, env=env, timeout=timeout, check=False)
    if first.returncode != 0:
        _run(["apt-get", "update", "-q"], env=env, timeout=timeout)
        _run(install, env=env, timeout=timeout)
    still = missing_packages()
    if still:
        raise ClusterError(f"apt-get install finished but executables of {still} are still missing")


# --------------------------------------------------------------------------------------------
# bring-up


def up(root: str | Path, *, cpus: int | None = None, install: bool = False, timeout: float = 120.0) -> Cluster:
    """Start a cluster in `root` (created if needed) and wait until it accepts jobs and accounting.

    Reuses the state of an earlier cluster in `root` (database, job ids) if there is one. If all its
    daemons are still running it is returned as is; if only some are, raises ClusterError (run `down`).
    install: apt-get install missing packages first (needs root). timeout: seconds for the whole
    bring-up. Raises ClusterError naming the daemon that failed, with the tail of its log.
    """
    lay = Layout(Path(root))
    running = [d for d in DAEMONS if _recorded_alive(lay, d)]
    if running == list(DAEMONS):
        return attach(lay.conf)
    if running:
        raise ClusterError(f"{lay.root}: daemons {running} from an earlier `up` still run; run `down` first")
    if install:
        install_packages()
    missing = missing_packages()
    if missing:
        raise ClusterError(f"missing packages {missing}: run `python {Path(__file__).name} install` as root")

    deadline = time.monotonic() + timeout
    settings = Settings.choose(cpus)
    _make_dirs(lay)
    _write_configs(lay, settings)
    env = {**os.environ, "SLURM_CONF": str(lay.conf)}
    try:
        _start_munge(lay, env, deadline)
        _start_mariadb(lay, settings, env, deadline)
        _start(lay, "slurmdbd", ["slurmdbd", "-D"], env)
        _wait(
            lay,
            "slurmdbd",
            lambda: _ok(["sacctmgr", "-n", "-P", "show", "cluster"], env),
            deadline,
            "slurmdbd to answer `sacctmgr show cluster`",
        )
        _register_accounting(settings, env)
        _start(lay, "slurmctld", ["slurmctld", "-D", "-f", str(lay.conf)], env)
        _wait(
            lay,
            "slurmctld",
            lambda: "is UP" in _out(["scontrol", "ping"], env),
            deadline,
            "slurmctld to answer `scontrol ping`",
        )
        _start(lay, "slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(lay.conf)], env)
        _wait(
            lay,
            "slurmd",
            lambda: _out(["sinfo", "-h", "-n", NODE, "-o", "%T"], env).strip() == "idle",
            deadline,
            f"node {NODE} to be idle in sinfo",
            also=("slurmctld",),
        )
        _start(lay, "slurmd2", ["slurmd", "-D", "-N", NODE2, "-f", str(lay.conf)], env)
        _wait(
            lay,
            "slurmd2",
            lambda: _out(["sinfo", "-h", "-n", NODE2, "-o", "%T"], env).strip() == "idle",
            deadline,
            f"node {NODE2} to be idle in sinfo",
            also=("slurmctld",),
        )
    except BaseException:
        stop(lay)
        raise
    return attach(lay.conf)


def _make_dirs(lay: Layout) -> None:
    for path, mode in [
        (lay.root, 0o755),
        (lay.etc, 0o755),
        (lay.root / "munge", 0o755),
        (lay.munge_key.parent, 0o700),
        (lay.munge_socket.parent, 0o755),
        (lay.munge_seed.parent, 0o700),
        (lay.db_data.parent, 0o755),
        (lay.db_tmp, 0o700),
        (lay.state, 0o700),
        (lay.spool, 0o755),
        (lay.spool / NODE, 0o755),
        (lay.spool / NODE2, 0o755),
        (lay.logs, 0o755),
        (lay.pids, 0o755),
    ]:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    if not lay.munge_key.exists():
        with os.fdopen(os.open(lay.munge_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as f:
            f.write(secrets.token_bytes(1024))


def _write_configs(lay: Layout, s: Settings) -> None:
    """slurm.conf, slurmdbd.conf (mode 600) and my.cnf for one bring-up."""
    sock = lay.munge_socket
    slurm_conf = f"""\
# Written by .ci/slurm/cluster.py; every path is under {lay.root}.
ClusterName={CLUSTER_NAME}
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={s.ports["slurmctld"]}
SlurmdPort={s.ports["slurmd"]}
SlurmUser={s.user}
SlurmdUser={s.user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire={CRED_EXPIRE_S}
StateSaveLocation={lay.state}
SlurmdSpoolDir={lay.spool}/%n
SlurmctldPidFile={lay.root / "slurmctld.pid"}
SlurmdPidFile={lay.root / "slurmd-%n.pid"}
SlurmctldLogFile={lay.log("slurmctld")}
SlurmdLogFile={lay.logs}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU={s.real_memory_mb // s.cpus}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval={SCHED_INTERVAL_S},bf_interval={SCHED_INTERVAL_S}
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait={KILL_WAIT_S}
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={s.ports["slurmdbd"]}
AccountingStoragePass={sock}
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MailProg=/bin/true
# node2 first: while one node is defined and it is named localhost, Slurm matches any name to it
NodeName={NODE2} NodeAddr=127.0.0.1 Port={s.ports["slurmd2"]} CPUs={s.cpus} RealMemory={s.real_memory_mb} State=UNKNOWN
NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 Port={s.ports["slurmd"]} CPUs={s.cpus} RealMemory={s.real_memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime={GRACE_TIME_S}
PartitionName={URGENT_PARTITION} Nodes={NODE} Default=NO MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
PartitionName={MULTI_PARTITION} Nodes={NODE},{NODE2} Default=NO MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
"""
    dbd_conf = f"""\
AuthType=auth/munge
AuthInfo=socket={sock}
DbdHost={NODE}
DbdAddr=127.0.0.1
DbdPort={s.ports["slurmdbd"]}
SlurmUser={s.user}
LogFile={lay.log("slurmdbd")}
PidFile={lay.root / "slurmdbd.pid"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={s.ports["mariadbd"]}
StorageUser={DB_USER}
StoragePass={s.db_password}
StorageLoc={DB_NAME}
"""
    my_cnf = f"""\
[mariadbd]
user={s.user}
datadir={lay.db_data}
tmpdir={lay.db_tmp}
socket={lay.db_socket}
port={s.ports["mariadbd"]}
bind-address=127.0.0.1
skip-name-resolve
pid-file={lay.root / "db" / "mariadbd.pid"}
log-error={lay.log("mariadbd")}
# The lock wait Slurm recommends for slurmdbd; a smaller buffer pool and log file than it recommends
# (slurmdbd logs a warning) keep the datadir at ~25 MB; no log flush per commit (a throwaway database).
innodb-buffer-pool-size=64M
innodb-log-file-size=8M
innodb-flush-log-at-trx-commit=0
innodb-lock-wait-timeout=900

[client]
socket={lay.db_socket}
"""
    lay.conf.write_text(slurm_conf)
    lay.my_cnf.write_text(my_cnf)
    lay.dbd_conf.touch(mode=0o600)
    lay.dbd_conf.chmod(0o600)
    lay.dbd_conf.write_text(dbd_conf)
    lay.info.write_text(
        json.dumps(
            {
                "cluster": CLUSTER_NAME,
                "partition": PARTITION,
                "urgent_partition": URGENT_PARTITION,
                "cpus": s.cpus,
                "real_memory_mb": s.real_memory_mb,
                "ports": s.ports,
            },
            indent=2,
        )
        + "\n"
    )


def _start_munge(lay: Layout, env: dict[str, str], deadline: float) -> None:
    """Start munged on the private key and socket.

    munged refuses a socket below a directory that not everyone may enter (e.g. pytest's 0700
    temp dirs); `--force` turns that refusal into a warning. Our own clients and jobs run as the
    cluster's user, who can enter them. In the foreground munged logs to stderr: log/munged.out.
    """
    lay.munge_socket.unlink(missing_ok=True)
    closed = [p for p in lay.munge_socket.parent.parents if not p.stat().st_mode & 0o001]
    _start(
        lay,
        "munged",
        [
            "munged",
            "--foreground",
            f"--socket={lay.munge_socket}",
            f"--key-file={lay.munge_key}",
            f"--seed-file={lay.munge_seed}",
            f"--pid-file={lay.munge_socket.parent / 'munged.pid'}",
            *(["--force"] if closed else []),
        ],
        env,
    )
    _wait(
        lay,
        "munged",
        lambda: _ok(["munge", "-n", "-S", str(lay.munge_socket)], env),
        deadline,
        f"munged to answer on {lay.munge_socket}",
    )


def _start_mariadb(lay: Layout, s: Settings, env: dict[str, str], deadline: float) -> None:
    """Initialise the datadir on first use (creating slurmdbd's database and user), then start mariadbd."""
    initialised = lay.db_data.parent / "initialised"  # written once mariadb-install-db succeeded
    if not initialised.exists():
        shutil.rmtree(lay.db_data, ignore_errors=True)
        grants = lay.db_data.parent / "init.sql"
        grants.unlink(missing_ok=True)
        with os.fdopen(os.open(grants, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(_db_grants_sql(s.db_password))
        try:
            _run(
                [
                    "mariadb-install-db",
                    f"--defaults-file={lay.my_cnf}",
                    "--skip-test-db",
                    "--auth-root-authentication-method=socket",
                    f"--extra-file={grants}",
                ],
                env=env,
                timeout=max(1.0, deadline - time.monotonic()),
                log=lay.out("mariadb-install-db"),
            )
        finally:
            grants.unlink(missing_ok=True)
        initialised.touch()
        init_sql = ""
    else:  # a fresh password was chosen for this bring-up: set it once the server is up
        init_sql = _db_grants_sql(s.db_password)
    _start(lay, "mariadbd", ["mariadbd", f"--defaults-file={lay.my_cnf}"], env)
    _wait(
        lay,
        "mariadbd",
        lambda: _ok(["mariadb-admin", f"--defaults-file={lay.my_cnf}", "ping"], env),
        deadline,
        f"mariadbd to answer on {lay.db_socket}",
    )
    if init_sql:
        _run(["mariadb", f"--defaults-file={lay.my_cnf}", "-e", init_sql], env=env, timeout=30)


def _db_grants_sql(password: str) -> str:
    # FLUSH PRIVILEGES loads the grant tables, which mariadb-install-db's bootstrap skips.
    return (
        "FLUSH PRIVILEGES;\n"
        f"CREATE DATABASE IF NOT EXISTS {DB_NAME};\n"
        f"CREATE OR REPLACE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
        f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';\n"
    )


def _register_accounting(s: Settings, env: dict[str, str]) -> None:
    """Add the cluster (slurmdbd then gives root an association) and the current user, if absent."""
    clusters = _out(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], env).split()
    if CLUSTER_NAME not in clusters:
        _run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME], env=env, timeout=30)
    users = _out(["sacctmgr", "-n", "-P", "show", "user", "format=user"], env).split()
    if s.user not in users:
        _run(["sacctmgr", "-i", "add", "user", s.user, "account=root", f"cluster={CLUSTER_NAME}"], env=env, timeout=30)


# --------------------------------------------------------------------------------------------
# attach / status / down


def attach(conf: str | Path, timeout: float = 15.0) -> Cluster:
    """Describe the live cluster whose clients use `conf`; raises ClusterError if it does not answer.

    The cluster must answer `scontrol show partition` and `sacctmgr show cluster` (accounting).
    """
    conf = Path(conf).resolve()
    if not conf.is_file():
        raise ClusterError(f"slurm.conf {conf} does not exist")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    shown = _run(["scontrol", "-o", "show", "partition"], env=env, timeout=timeout, check=False)
    if shown.returncode != 0:
        raise ClusterError(f"slurmctld of {conf} does not answer: {shown.stderr.strip() or shown.stdout.strip()}")
    accounting = _run(["sacctmgr", "-n", "-P", "show", "cluster"], env=env, timeout=timeout, check=False)
    if accounting.returncode != 0:
        raise ClusterError(f"accounting (slurmdbd) of {conf} does not answer: {accounting.stderr.strip()}")
    parts = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in shown.stdout.splitlines()]
    default = next((p for p in parts if p.get("Default") == "YES"), None)
    if default is None:
        raise ClusterError(f"cluster of {conf} has no default partition")
    tier = int(default.get("PriorityTier", 1))
    preemptable = default.get("PreemptMode", "").upper().startswith("REQUEUE")
    urgent = next((p["PartitionName"] for p in parts if preemptable and int(p.get("PriorityTier", 1)) > tier), None)
    return Cluster(
        conf=conf, partition=default["PartitionName"], urgent_partition=urgent, cpus=int(default.get("TotalCPUs", 1))
    )


def status(root: str | Path) -> dict[str, object]:
    """{"dir", "daemons": {name: pid or None}, "conf", "sinfo"} for the cluster in `root`."""
    lay = Layout(Path(root))
    daemons = {d: (_read_pid(lay, d)[0] if _recorded_alive(lay, d) else None) for d in DAEMONS}
    sinfo = ""
    if all(daemons.values()):
        sinfo = _run(["sinfo"], env={**os.environ, "SLURM_CONF": str(lay.conf)}, timeout=15, check=False).stdout
    return {"dir": str(lay.root), "conf": str(lay.conf), "daemons": daemons, "sinfo": sinfo}


def down(root: str | Path, timeout: float = 60.0) -> list[str]:
    """Cancel remaining jobs, then stop the daemons recorded in `root`/pids; returns the names stopped."""
    lay = Layout(Path(root))
    if _recorded_alive(lay, "slurmctld"):
        _cancel_all_jobs(lay, deadline=time.monotonic() + min(timeout / 2, 30.0))
    return stop(lay, timeout)


def stop(lay: Layout, timeout: float = 60.0) -> list[str]:
    """SIGTERM each recorded daemon (reverse start order), wait, SIGKILL what remains. Only those pids."""
    stopped = []
    groups = [("slurmd", "slurmd2", "slurmctld"), ("slurmdbd",), ("mariadbd", "munged")]
    per_group = timeout / len(groups)
    for group in groups:
        live = {d: _read_pid(lay, d) for d in group if _recorded_alive(lay, d)}
        _signal_all(live, signal.SIGTERM)
        if not _wait_gone(live, per_group):
            _signal_all(live, signal.SIGKILL)
            if not _wait_gone(live, 10.0):
                still = [name for name, rec in live.items() if _alive(*rec)]
                raise ClusterError(f"{still} survived SIGKILL; pid records left in {lay.pids}")
        stopped.extend(live)
        for name in group:
            lay.pid_file(name).unlink(missing_ok=True)
    _reap()
    return stopped


def _signal_all(records: dict[str, tuple[int, int]], sig: int) -> None:
    for pid, start in records.values():
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError):  # exited since the check
                os.kill(pid, sig)


def _wait_gone(records: dict[str, tuple[int, int]], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while any(_alive(*rec) for rec in records.values()):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def _cancel_all_jobs(lay: Layout, deadline: float) -> None:
    env = {**os.environ, "SLURM_CONF": str(lay.conf)}
    listed = _run(["squeue", "-h", "-o", "%A"], env=env, timeout=15, check=False)
    jobs = sorted(set(listed.stdout.split()))
    if not jobs:
        return
    _run(["scancel", *jobs], env=env, timeout=15, check=False)
    while time.monotonic() < deadline and _out(["squeue", "-h", "-o", "%A"], env).strip():
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# processes


def _start(lay: Layout, name: str, argv: list[str], env: dict[str, str]) -> None:
    """Start a daemon in the foreground mode, detached from our session; record its pid."""
    with open(lay.out(name), "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=lay.root,
            start_new_session=True,
        )
    start = _start_ticks(proc.pid)
    lay.pid_file(name).write_text(f"{proc.pid} {start}\n")
    _CHILDREN[proc.pid] = proc


_CHILDREN: dict[int, subprocess.Popen] = {}  # daemons started by this process, reaped after they stop


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def _read_pid(lay: Layout, name: str) -> tuple[int, int] | None:
    try:
        pid, start = lay.pid_file(name).read_text().split()
        return int(pid), int(start)
    except (FileNotFoundError, ValueError):
        return None


def _recorded_alive(lay: Layout, name: str) -> bool:
    rec = _read_pid(lay, name)
    return rec is not None and _alive(*rec)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if there is no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else -1  # field 22 of stat: start time since boot, in clock ticks


def _alive(pid: int, start: int) -> bool:
    """True if `pid` runs, is not a zombie, and is the same process (same start time) as recorded."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == start


def _wait(lay: Layout, daemon: str, ready, deadline: float, what: str, also: tuple[str, ...] = ()) -> None:
    """Poll `ready()` until true. If `daemon` exits or the deadline passes, raise ClusterError with
    the tail of its logs (and of the `also` daemons' logs)."""
    rec = _read_pid(lay, daemon)
    while True:
        if ready():
            return
        if rec is None or not _alive(*rec):
            raise ClusterError(f"{daemon} exited while waiting for {what}\n{_log_tails(lay, daemon, *also)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what}\n{_log_tails(lay, daemon, *also)}")
        time.sleep(0.2)


def _log_tails(lay: Layout, *daemons: str) -> str:
    parts = []
    for daemon in daemons:
        for path in (lay.log(daemon), lay.out(daemon)):
            if path.is_file() and path.stat().st_size:
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                parts.append(f"--- tail of {path} ---\n" + "\n".join(lines))
    return "\n".join(parts) or f"(no log written by {', '.join(daemons)} under {lay.logs})"


# --------------------------------------------------------------------------------------------
# small helpers


def _run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float, check: bool = True, log: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a command to completion (stdin closed) within `timeout` s; ClusterError on failure if `check`."""
    exe = _which(argv[0])
    if exe is None:
        raise ClusterError(f"command {argv[0]!r} not found on PATH")
    try:
        res = subprocess.run(
            [exe, *argv[1:]], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from e
    if log is not None:
        log.write_text(res.stdout + res.stderr)
    if check and res.returncode != 0:
        raise ClusterError(
            f"`{' '.join(argv)}` failed with exit code {res.returncode}:\n{(res.stdout + res.stderr).strip()[-4000:]}"
        )
    return res


def _ok(argv: list[str], env: dict[str, str]) -> bool:
    return _run(argv, env=env, timeout=10, check=False).returncode == 0


def _out(argv: list[str], env: dict[str, str]) -> str:
    res = _run(argv, env=env, timeout=10, check=False)
    return res.stdout if res.returncode == 0 else ""


def _which(exe: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
    return shutil.which(exe, path=path)


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("MemTotal not found in /proc/meminfo")


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free on 127.0.0.1 now (chosen by the kernel)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="apt-get install the missing packages (root)")
    for name, help_ in [
        ("up", "start the cluster"),
        ("down", "stop the cluster's daemons"),
        ("status", "daemons and sinfo"),
        ("env", "print `export SLURM_CONF=...`"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--dir", required=True, type=Path, help="cluster directory")
        if name in ("up", "down"):
            p.add_argument(
                "--timeout",
                type=float,
                default=120.0 if name == "up" else 60.0,
                help="seconds to wait for the daemons (default: 120 up, 60 down)",
            )
        if name == "up":
            p.add_argument("--install", action="store_true", help="install missing packages first (root)")
            p.add_argument("--cpus", type=int, default=None, help="CPUs of the node (default min(2, nproc))")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "install":
            install_packages()
            print("packages present:", ", ".join(PACKAGES))
        elif args.cmd == "up":
            t0 = time.monotonic()
            cluster = up(args.dir, cpus=args.cpus, install=args.install, timeout=args.timeout)
            print(
                f"# cluster up in {time.monotonic() - t0:.1f} s: partition {cluster.partition}, "
                f"urgent partition {cluster.urgent_partition}, {cluster.cpus} CPUs",
                file=sys.stderr,
            )
            print(f"export SLURM_CONF={cluster.conf}")
        elif args.cmd == "env":
            print(f"export SLURM_CONF={Layout(args.dir).conf}")
        elif args.cmd == "status":
            print(json.dumps(status(args.dir), indent=2))
        else:
            t0 = time.monotonic()
            stopped = down(args.dir, timeout=args.timeout)
            print(f"# stopped {stopped} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
