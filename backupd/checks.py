"""`check-config --connect`: prove each job's source is reachable without making a backup."""

from __future__ import annotations

from backupd.config import Config, MySQLPart, SSHCfg, WordPressJob, read_secret
from backupd.errors import StepError
from backupd.procs import last_line, run_capture


def check_ssh(ssh: SSHCfg) -> str:
    from backupd.remote import connect, remote_run

    with connect(ssh) as conn:
        rc, _, err = remote_run(conn, "true")
        if rc != 0:
            raise StepError("ssh check", last_line(err), host=ssh.label)
    return f"ssh {ssh.target}:{ssh.port}"


def check_mysql(part: MySQLPart) -> str:
    from backupd.sources.mysql import find_tool, private_option_file

    client = find_tool(["mariadb", "mysql"], "MySQL client")
    with private_option_file(part, read_secret(part.password_file)) as opt:
        proc = run_capture([client, f"--defaults-extra-file={opt}", "-N", "-B", "-e", "SELECT VERSION()"], timeout=30)
    if proc.returncode != 0:
        raise StepError("connect", last_line(proc.stderr), host=f"{part.host}:{part.port}")
    return f"mysql {part.host}:{part.port} server {proc.stdout.strip()}"


def check_job(config: Config, name: str) -> str:
    job = config.job(name)
    details = []
    ssh = getattr(job, "ssh", None)
    if ssh is not None:
        details.append(check_ssh(ssh))
    part: MySQLPart | None = job.mysql if isinstance(job, WordPressJob) else None
    if job.type == "mysql":
        part = job
    if part is not None and not part.via_ssh:
        details.append(check_mysql(part))
    if job.type in ("redis", "mongodb"):
        from backupd.sources import source_module

        fn = getattr(source_module(job), "check_reachable", None)
        if fn is not None:
            details.append(str(fn(job)))
    return ", ".join(details) or "nothing to check"
