"""The keys of a `mongodb` job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import model_validator

from backupd.settings import JobBase


class MongoJob(JobBase):
    type: Literal["mongodb"]
    uri: str
    password_file: Path | None = None
    read_preference: Literal["primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"] = (
        "secondary"
    )
    oplog: bool | None = None
    engine: Literal["auto", "mongodump", "native"] = "auto"
    include: list[str] = []
    exclude: list[str] = []

    @model_validator(mode="after")
    def _no_password_in_uri(self) -> MongoJob:
        if re.match(r"^mongodb(\+srv)?://[^/@]*:[^/@]*@", self.uri):
            raise ValueError("uri must not contain a password: use password_file")
        return self
