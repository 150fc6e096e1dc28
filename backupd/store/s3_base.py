"""What every S3 module shares: the error type, part sizes and S3's SHA256 checksums, one-line errors."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from backupd.errors import StepError

MiB = 1024 * 1024
MIN_PART = 8 * MiB  # also the multipart threshold: smaller files go up in one PUT
MAX_PARTS = 10_000
TARGET_PARTS = 9_000  # headroom under S3's 10,000-part limit
READ_BLOCK = 4 * MiB


class S3Error(StepError):
    """An S3 operation failed; one line naming the step, job and what S3 (or the network) said."""

    def __init__(self, message: str, *, job: str | None = None) -> None:
        super().__init__("s3", message, job=job)


# ------------------------------------------------------------------ pure helpers


def part_size(size: int) -> int:
    """Part size for a file: at least 8 MiB, whole MiB, and few enough parts (< 10,000) for any size."""
    need = -(-size // TARGET_PARTS)
    return max(MIN_PART, -(-need // MiB) * MiB)


def b64_sha256_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def file_checksum(path: Path, size: int, sha256_hex: str | None = None) -> str:
    """The SHA256 checksum S3 reports for `path` uploaded with our part size (multipart: checksum of parts).

    A single-part object's checksum is the file's sha256, so a known digest saves reading the file.
    """
    ps = part_size(size)
    if size < MIN_PART:
        if sha256_hex:
            return b64_sha256_of_hex(sha256_hex)
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(READ_BLOCK), b""):
                h.update(block)
        return base64.b64encode(h.digest()).decode()
    parts: list[bytes] = []
    with path.open("rb") as fh:
        while True:
            h, left = hashlib.sha256(), ps
            while left:
                block = fh.read(min(READ_BLOCK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
            if left == ps:
                break
            parts.append(h.digest())
            if left:
                break
    return f"{base64.b64encode(hashlib.sha256(b''.join(parts)).digest()).decode()}-{len(parts)}"


def same_checksum(reported: str | None, expected: str) -> bool:
    """Compare ignoring the `-N` part-count suffix (S3 shows it on HEAD; some servers omit it)."""
    if not reported:
        return False
    return reported.split("-")[0] == expected.split("-")[0]


def error_text(exc: BaseException) -> str:
    """One line for anything boto3 raises: the S3 error code and message, or the network failure."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "error")
        msg = err.get("Message") or ""
        op = exc.operation_name
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = f"{op}: {code}" + (f" ({status})" if status else "") + (f": {msg}" if msg else "")
    elif isinstance(exc, NoCredentialsError):
        text = "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or s3.profile)"
    elif isinstance(exc, BotoCoreError):
        text = str(exc)
    elif isinstance(exc, OSError):
        text = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]
