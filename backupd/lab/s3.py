"""moto's standalone S3 server on a loopback port, for the tests and the demo (never used in production)."""

from __future__ import annotations

import http.client
import importlib.util
import sys
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

from backupd.scratch.base import ScratchError, ScratchServer


class MotoS3(ScratchServer):
    """moto's standalone server as a real HTTP process; any credentials are accepted."""

    name = "moto-s3"
    access_key: ClassVar[str] = "testing"
    secret_key: ClassVar[str] = "testing"  # noqa: S105 (moto accepts any credentials)
    region: ClassVar[str] = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a child process (e.g. `backupd`) that should reach this server with boto3."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str, object_lock: bool = False) -> None:
        """A bucket; with `object_lock`, created with Object Lock enabled (and so versioned)."""
        if object_lock:
            self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            self.client().create_bucket(Bucket=name)

    def _prepare(self) -> None:
        if importlib.util.find_spec("moto") is None:
            raise ScratchError("scratch: moto not found (install the dev extra: moto[server])")

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port), *self.extra_args]

    def _probe(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()
