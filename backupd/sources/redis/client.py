"""Talking to Redis: the client (password only in AUTH), one-line errors, and `check-config --connect`."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from backupd.errors import StepError
from backupd.settings import read_secret
from backupd.sources.redis.config import RedisJob


def host_label(job: RedisJob) -> str:
    return f"{job.host}:{job.port}"


def client(job: RedisJob, timeout: float = 30.0) -> redis.Redis:
    """A redis-py client; the password (from password_file) only ever travels in AUTH over the socket."""
    return redis.Redis(
        host=job.host,
        port=job.port,
        password=read_secret(job.password_file),
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 10.0),
        decode_responses=False,
        # redis-py retries connection errors with backoff by default, and a refused password is one:
        # retry only timeouts, so a wrong password fails at once.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2, supported_errors=(redis.TimeoutError,)),
    )


def redis_error(exc: Exception, job: RedisJob, step: str) -> StepError:
    """One line for a redis-py error; never echoes the password."""
    text = " ".join(str(exc).split())
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "invalid password" in text:
        msg = "authentication failed: the password in password_file was refused"
    elif "NOAUTH" in text or "Authentication required" in text:
        msg = "authentication required: set password_file"
    elif isinstance(exc, redis.TimeoutError):
        msg = f"timed out talking to Redis ({text})"
    elif isinstance(exc, redis.ConnectionError):
        msg = f"cannot connect to Redis: {text}"
    else:
        msg = f"Redis replied: {text}"
    return StepError(step, msg, job=None, host=host_label(job))


def reach_redis(job: RedisJob) -> str:
    """check-config --connect: PING and the role, without saving anything."""
    try:
        with client(job, timeout=10.0) as conn:
            conn.ping()
            info = conn.info("replication")
            version = conn.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        raise redis_error(exc, job, "connect") from None
    role = info.get("role", "?")
    link = f", link {info.get('master_link_status', '?')}" if role == "slave" else ""
    return f"redis {host_label(job)} {version} role {role}{link}"
