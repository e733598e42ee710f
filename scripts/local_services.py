"""Start (or stop) a throwaway PostgreSQL and Redis on 127.0.0.1, for the tests and the replica load test.

    python scripts/local_services.py start DIR    # prints ROUTE_LLM_TEST_POSTGRES_URL=... and ..._REDIS_URL=...
    python scripts/local_services.py stop DIR

Both come from Debian's packages (``apt-get install postgresql redis-server``); nothing is downloaded. Everything
lives under DIR: the Postgres cluster (initdb, trust auth on loopback only, fsync off: the data is disposable) and
Redis's working directory (no persistence). Run as root, each server runs as its own system user (postgres,
redis), as the packages set them up; otherwise as the current user. Exit status 3 means a server's binaries are
missing, so that callers can skip with that reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

EXIT_MISSING = 3
DATABASE = "routellm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as(user: str, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` when we are root (servers refuse to, or should not, run as root)."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def _own(path: Path, user: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def start(root: Path) -> dict[str, str]:
    pg_bin, redis = _postgres_bin(), shutil.which("redis-server")
    missing = [name for name, found in (("postgresql", pg_bin), ("redis-server", redis)) if not found]
    if missing:
        print(f"not installed: {', '.join(missing)} (apt-get install -y postgresql redis-server)", file=sys.stderr)
        sys.exit(EXIT_MISSING)
    assert pg_bin is not None and redis is not None
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the servers' users must reach their directories below
    for parent in root.parents:
        if os.geteuid() == 0 and not parent.stat().st_mode & 0o001:
            sys.exit(f"{parent} is not searchable by other users: the servers (users postgres, redis) cannot "
                     f"reach {root}; choose a directory under one they can")
    pg_user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    redis_user = "redis" if os.geteuid() == 0 else pg_user
    pg_data, pg_port = root / "pg", _free_port()
    _own(pg_data, pg_user)
    _as(pg_user, [str(pg_bin / "initdb"), "-D", str(pg_data), "-A", "trust", "-U", DATABASE, "--no-sync",
                  "-E", "UTF8", "--locale", "C"])
    options = (f"-p {pg_port} -k {pg_data} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=200")
    _as(pg_user, [str(pg_bin / "pg_ctl"), "-D", str(pg_data), "-o", options, "-l", str(pg_data / "server.log"),
                  "-w", "-t", "60", "start"])
    _as(pg_user, [str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", DATABASE, DATABASE])
    redis_dir, redis_port = root / "redis", _free_port()
    _own(redis_dir, redis_user)
    _as(redis_user, [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
                     "--daemonize", "yes", "--pidfile", str(redis_dir / "redis.pid"),
                     "--logfile", str(redis_dir / "redis.log"), "--save", "", "--appendonly", "no"])
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis did not answer on port {redis_port}; see {redis_dir / 'redis.log'}")
        time.sleep(0.1)
    urls = {"ROUTE_LLM_TEST_POSTGRES_URL": f"postgresql://{DATABASE}@127.0.0.1:{pg_port}/{DATABASE}",
            "ROUTE_LLM_TEST_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    (root / "urls.env").write_text("".join(f"{k}={v}\n" for k, v in urls.items()))
    return urls


def stop(root: Path) -> None:
    pg_bin = _postgres_bin()
    pg_data = root / "pg"
    if pg_bin is not None and (pg_data / "postmaster.pid").exists():
        user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        _as(user, [str(pg_bin / "pg_ctl"), "-D", str(pg_data), "-m", "immediate", "-w", "stop"])
    pidfile = root / "redis" / "redis.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), 15)
        except (ProcessLookupError, ValueError):
            pass


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        sys.exit(__doc__)
    root = Path(argv[2]).resolve()
    if argv[1] == "start":
        for key, value in start(root).items():
            print(f"{key}={value}")
    else:
        stop(root)


if __name__ == "__main__":
    main(sys.argv)
