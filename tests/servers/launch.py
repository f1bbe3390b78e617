#!/usr/bin/env python3
"""Starts one test server in the foreground: writes its config into a private directory,
then replaces itself (exec) with the server, so the caller's child *is* the server.

Standard library only; run with the system `python3`. Every server listens on 127.0.0.1
only and writes only under --dir. The caller picks the port, waits for it, and stops the
server by killing its session (tests/it/common/servers.rs).

    launch.py postgres        --dir D --port P
    launch.py createdb        --port P --name DB
    launch.py buildgrid-cache --venv V --dir D --port P [--instance NAME] [TLS]
    launch.py buildgrid-exec  --venv V --dir D --port P --sql URL [--match-key K ...]
                              [--queue-timeout S] [--bot-keepalive S] [--max-job-attempts N]
                              [TLS]
    launch.py nginx           --dir D --port P [TLS]

TLS: `--certs C --tls-port P2 --mtls-port P3` adds, beside the plain port P, a TLS port
(server certificate C/server.pem, key C/server.key) and an mTLS port that also requires a
client certificate signed by C/ca.pem (tests/it/common/tls.rs makes them).

Layouts under D: BuildGrid's disk CAS is `storage/cas/objects/<hash[:2]>/<hash[2:]>`;
nginx serves `cache/ac/<sha256>` and `cache/cas/<sha256>`; PostgreSQL's data directory is
`data/` (owned by the `postgres` user when run as root), its socket directory `socket/`.
"""

import argparse
import glob
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

# The property keys pochi sends (docs/remote-testing.md); BuildGrid always adds OSFamily/ISA.
DEFAULT_MATCH_KEYS = ["OSFamily", "ISA", "gpu", "tensorrt", "cuda", "compute_capability",
                      "pochi-toolchain"]


def postgres_bindir() -> Path:
    """Debian's newest /usr/lib/postgresql/N/bin, else the directory of `postgres` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    sys.exit("launch.py: PostgreSQL not found (Debian: apt-get install postgresql)")


def postgres_user():
    """The account PostgreSQL runs as: `postgres` when we are root (it refuses root), else us."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


def drop_to(account) -> None:
    if account is not None:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)


def run_postgres(args) -> None:
    base, account = Path(args.dir), postgres_user()
    data, socket = base / "data", base / "socket"
    for path in (data, socket):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)
    if account is not None:
        os.chmod(base, 0o711)  # postgres must traverse to its own directories
    bindir = postgres_bindir()
    if not (data / "PG_VERSION").exists():
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--locale=C", "--no-sync"],
                       check=True, stdout=sys.stderr, preexec_fn=lambda: drop_to(account))
    drop_to(account)
    settings = ["listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off",
                "full_page_writes=off", "max_connections=200", "log_min_messages=warning"]
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(args.port), "-k", str(socket)]
    for setting in settings:
        argv += ["-c", setting]
    os.execv(argv[0], argv)


def run_createdb(args) -> None:
    subprocess.run([str(postgres_bindir() / "createdb"), "-h", "127.0.0.1", "-p", str(args.port),
                    "-U", "postgres", args.name], check=True)


def services_yaml(storage_anchor: str, execution: bool) -> str:
    services = ["      - !action-cache\n        cache: *ac\n",
                "      - !cas\n        storage: *%s\n" % storage_anchor,
                "      - !bytestream\n        storage: *%s\n" % storage_anchor]
    if execution:
        services.append("      - !execution\n        scheduler: *scheduler\n"
                        "        operation-stream-keepalive-timeout: 5\n")
    return "".join(services)


def tls_channels_yaml(args) -> str:
    """BuildGrid's TLS channel and its mTLS channel (a client certificate required)."""
    if not args.certs:
        return ""
    certs = Path(args.certs)
    channel = ("  - !channel\n    address: \"127.0.0.1:%d\"\n    insecure-mode: false\n"
               "    credentials:\n      tls-server-key: %s\n      tls-server-cert: %s\n")
    tls = channel % (args.tls_port, certs / "server.key", certs / "server.pem")
    mtls = channel % (args.mtls_port, certs / "server.key", certs / "server.pem")
    mtls += "      tls-client-certs: %s\n" % (certs / "ca.pem")
    return tls + mtls


def common_yaml(args) -> str:
    storage = Path(args.dir) / "storage"
    return (
        "server:\n  - !channel\n    address: \"127.0.0.1:%d\"\n    insecure-mode: true\n"
        + tls_channels_yaml(args) +
        "authorization:\n  method: none\n"
        "thread-pool-size: 64\n"
        "storages:\n  - !disk-storage &cas\n    path: %s\n"
        "caches:\n  - !lru-action-cache &ac\n    storage: *cas\n    max-cached-refs: 100000\n"
        "    allow-updates: true\n    cache-failed-actions: false\n"
    ) % (args.port, storage)


def psycopg2_url(url: str) -> str:
    """BuildGrid 0.4.4 listens for job updates with psycopg2's `poll()`; SQLAlchemy 2.1 picks
    psycopg 3 for a plain `postgresql://` URL, which breaks that (updates then come only with
    the stream keepalive), so the driver is named."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def scheduler_yaml(args) -> str:
    """The scheduler: polls every 0.1 s, and one job assigner without BuildGrid's random
    extra wait (`jitter-factor`, up to 1 s by default, meant to spread several assigners;
    there is one here), so a job waits for a worker about 0.1 s, not 0.6 s."""
    keys = "".join("        - %s\n" % key for key in (args.match_key or DEFAULT_MATCH_KEYS))
    queue = ""
    if args.queue_timeout:
        queue = ("    queue-timeout-job-max-age: {seconds: %s}\n"
                 "    queue-timeout-period: {seconds: 1}\n") % args.queue_timeout
    return (
        "connections:\n  - !sql-connection &sql\n    connection-string: %s\n"
        "    pool-size: 20\n    max-overflow: 20\n"
        "schedulers:\n  - !sql-scheduler &scheduler\n    sql: *sql\n    storage: *cas\n"
        "    action-cache: *ac\n"
        "    property-set: !dynamic-property-set\n      match-property-keys:\n%s"
        "    bot-session-keepalive-timeout: %s\n    session-expiry-timer-interval: 1\n"
        "    max-job-attempts: %s\n    poll-interval: 0.1\n    bot-poll-interval: 0.1\n%s"
        "    assigners:\n      - !priority-age-assigner\n        interval: 0.1\n"
        "        failure-backoff: 0.5\n        jitter-factor: 0\n"
    ) % (psycopg2_url(args.sql), keys, args.bot_keepalive, args.max_job_attempts, queue)


def run_buildgrid(args, execution: bool) -> None:
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    config = common_yaml(args)
    if execution:
        config += scheduler_yaml(args)
    config += "instances:\n  - name: \"%s\"\n    services:\n%s" % (
        args.instance, services_yaml("cas", execution))
    path = base / "buildgrid.yml"
    path.write_text(config)
    bgd = str(Path(args.venv) / "bin" / "bgd")
    if execution:
        subprocess.run([bgd, "migrate", "apply", args.sql], check=True, stdout=sys.stderr)
    os.execv(bgd, [bgd, "server", "start", str(path)])


NGINX_CONF = """\
daemon off;
worker_processes 1;
%(user)s
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 256; }
http {
    access_log %(dir)s/access.log;
    client_body_temp_path %(dir)s/tmp/body;
    proxy_temp_path %(dir)s/tmp/proxy;
    fastcgi_temp_path %(dir)s/tmp/fastcgi;
    uwsgi_temp_path %(dir)s/tmp/uwsgi;
    scgi_temp_path %(dir)s/tmp/scgi;
    client_max_body_size 0;
    server {
        listen 127.0.0.1:%(port)d;
%(cache)s
    }
%(tls)s}
"""

NGINX_CACHE = """\
        root %(dir)s/cache;
        location / {
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }"""

NGINX_TLS = """\
    server {
        listen 127.0.0.1:%(tls_port)d ssl;
        ssl_certificate %(certs)s/server.pem;
        ssl_certificate_key %(certs)s/server.key;
%(cache)s
    }
    server {
        listen 127.0.0.1:%(mtls_port)d ssl;
        ssl_certificate %(certs)s/server.pem;
        ssl_certificate_key %(certs)s/server.key;
        ssl_client_certificate %(certs)s/ca.pem;
        ssl_verify_client on;
%(cache)s
    }
"""


def run_nginx(args) -> None:
    base = Path(args.dir)
    writable = [base / "cache", base / "cache" / "ac", base / "cache" / "cas", base / "tmp"]
    for path in writable:
        path.mkdir(parents=True, exist_ok=True)
    user = ""
    if os.geteuid() == 0:
        # The master runs as root; its worker runs as www-data, which must own what it writes.
        account = pwd.getpwnam("www-data")
        user = "user www-data;"
        os.chmod(base, 0o755)
        for path in writable:
            os.chown(path, account.pw_uid, account.pw_gid)
    conf = base / "nginx.conf"
    cache = NGINX_CACHE % {"dir": base}
    tls = ""
    if args.certs:
        tls = NGINX_TLS % {"certs": args.certs, "tls_port": args.tls_port,
                           "mtls_port": args.mtls_port, "cache": cache}
    conf.write_text(NGINX_CONF % {"dir": base, "port": args.port, "user": user, "cache": cache,
                                  "tls": tls})
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    os.execv(nginx, [nginx, "-p", str(base), "-e", str(base / "error.log"), "-c", str(conf)])


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="server", required=True)
    for name in ("postgres", "buildgrid-cache", "buildgrid-exec", "nginx"):
        one = sub.add_parser(name)
        one.add_argument("--dir", required=True)
        one.add_argument("--port", type=int, required=True)
        if name.startswith("buildgrid"):
            one.add_argument("--venv", required=True)
            one.add_argument("--instance", default="")
        if name != "postgres":
            one.add_argument("--certs")
            one.add_argument("--tls-port", type=int)
            one.add_argument("--mtls-port", type=int)
    created = sub.add_parser("createdb")
    created.add_argument("--port", type=int, required=True)
    created.add_argument("--name", required=True)
    execution = sub.choices["buildgrid-exec"]
    execution.add_argument("--sql", required=True)
    execution.add_argument("--match-key", action="append")
    execution.add_argument("--queue-timeout", type=float)
    execution.add_argument("--bot-keepalive", type=int, default=6)
    execution.add_argument("--max-job-attempts", type=int, default=5)
    return parser.parse_args(argv)


def main() -> None:
    args = parse(sys.argv[1:])
    if args.server == "postgres":
        run_postgres(args)
    elif args.server == "createdb":
        run_createdb(args)
    elif args.server == "nginx":
        run_nginx(args)
    else:
        run_buildgrid(args, execution=args.server == "buildgrid-exec")


if __name__ == "__main__":
    main()
