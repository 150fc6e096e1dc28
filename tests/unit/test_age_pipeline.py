"""age encryption below the runner: the header reader, the pipeline's encrypting stage (checked by the real
`age` binary), decryption on the fly, recipients and identities in the configuration."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backupd.config import load_config
from backupd.engine import crypto
from backupd.engine.compression import open_decompressed, stored_codec
from backupd.engine.pipeline import ArtifactResult, ArtifactWriter
from backupd.errors import ConfigError
from backupd.formats import agehdr
from backupd.formats.sqldump import SqlDumpChecker
from backupd.lab.content import write_config

needs_age = pytest.mark.skipif(shutil.which("age") is None, reason="the age binary is not installed")


def keygen(path: Path) -> str:
    """A real key pair from age-keygen; returns the recipient."""
    out = subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True)
    return out.stderr.strip().split(": ", 1)[1]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str, Path, str]:
    if shutil.which("age-keygen") is None:
        pytest.skip("age-keygen is not installed")
    return tmp_path / "a.key", keygen(tmp_path / "a.key"), tmp_path / "b.key", keygen(tmp_path / "b.key")


@pytest.fixture(params=["age", "pyrage"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Decryption through the `age` binary (preferred when installed) and through pyrage in a thread."""
    if request.param == "age" and shutil.which("age") is None:
        pytest.skip("the age binary is not installed")
    if request.param == "pyrage":
        monkeypatch.setattr(crypto, "age_binary", lambda: None)
    return str(request.param)


def sql(rows: int) -> bytes:
    head = (b"-- MariaDB dump 10.19-11.4.2-MariaDB, for debian-linux-gnu (x86_64)\n--\n"
            b"-- Host: x    Database: shop\n-- ---\n\n")
    body = b"".join(b"INSERT INTO `t` VALUES (%d,'MARKER-plaintext');\n" % i for i in range(rows))
    return head + b"CREATE TABLE `t` (`id` int, `v` text);\n" + body + b"-- Dump completed on 2026-01-01 10:00:00\n"


def write_artifact(tmp_path: Path, data: bytes, recipients: list[str]) -> ArtifactResult:
    w = ArtifactWriter(tmp_path, "shop", "mysql-sql", ".sql", checker=SqlDumpChecker(), recipients=recipients)
    for i in range(0, len(data), 1 << 16):
        w.write(data[i : i + (1 << 16)])
    return w.close()


# ------------------------------------------------------------------ the header reader


def test_header_reader_counts_recipients_and_skips_grease(keys: tuple[Path, str, Path, str]) -> None:
    _, a, _, b = keys
    data = crypto_encrypt(b"x" * 1000, [a, b])
    h = agehdr.parse(data)
    assert h.x25519 == 2 and len(h.mac) == 32 and data[h.length - 1 : h.length] == b"\n"
    assert agehdr.check(data, len(data), 2) == []
    assert "2 X25519 recipients, manifest says 1" in agehdr.check(data, len(data), 1)[0]
    assert agehdr.check(data[: h.length + 10], h.length + 10, 2) == ["age payload truncated"]
    assert "header truncated" in agehdr.check(data[:40], 40)[0]
    assert "not an age v1 file" in agehdr.check(b"\x28\xb5\x2f\xfd", 4)[0]
    broken = data.replace(b"-> X25519 ", b"-> X25519 !!", 1)
    assert agehdr.check(broken, len(broken))


def crypto_encrypt(data: bytes, recipients: list[str]) -> bytes:
    import pyrage

    return bytes(pyrage.encrypt(data, [crypto.parse_recipient(r) for r in recipients]))


# ------------------------------------------------------------------ the pipeline


@needs_age
def test_pipeline_encrypts_in_one_pass_and_age_decrypts_it(
    tmp_path: Path, keys: tuple[Path, str, Path, str], backend: str
) -> None:
    akey, a, bkey, b = keys
    data = sql(200_000)  # ~9 MB: many chunks through compressor, pipe and age
    res = write_artifact(tmp_path, data, [a, b])
    assert res.file == "shop.sql.zst.age" and res.ok and res.raw_bytes == len(data)
    stored = (tmp_path / res.file).read_bytes()
    assert res.sha256 == hashlib.sha256(stored).hexdigest() and res.bytes == len(stored)
    assert b"MARKER-plaintext" not in stored and stored.startswith(agehdr.MAGIC)
    manifest = res.to_manifest()
    assert manifest["encrypted"] is True and manifest["recipients"] == [crypto.fingerprint(a), crypto.fingerprint(b)]
    assert a not in str(manifest) and res.check is not None and res.check.stats["tables"]
    for key in (akey, bkey):  # either recipient opens it, with the real age binary
        argv = ["age", "-d", "-i", str(key), str(tmp_path / res.file)]
        age = subprocess.Popen(argv, stdout=subprocess.PIPE)
        plain = subprocess.run(["zstd", "-dc"], stdin=age.stdout, capture_output=True, check=True).stdout
        assert age.wait() == 0 and plain == data
    # and backupd's own reader, through the keyring
    path = tmp_path / res.file
    assert stored_codec(path) == "zstd"
    with crypto.unlocking(crypto.load_identities(akey)):
        algo, stream = open_decompressed(path)
        with stream:
            assert algo == "zstd" and stream.read() == data
    with pytest.raises(crypto.DecryptionError, match="no age identity"):
        open_decompressed(path)


def test_wrong_identity_and_damaged_ciphertext_raise(
    tmp_path: Path, keys: tuple[Path, str, Path, str], backend: str
) -> None:
    akey, a, bkey, _ = keys
    res = write_artifact(tmp_path, sql(20_000), [a])
    path = tmp_path / res.file
    assert not crypto.can_decrypt(path, crypto.load_identities(bkey))
    assert crypto.can_decrypt(path, crypto.load_identities(akey))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with crypto.unlocking(crypto.load_identities(akey)), pytest.raises(crypto.DecryptionError, match="cannot decrypt"):
        _, stream = open_decompressed(path)  # age authenticates each 64 KiB chunk before zstd sees it
        with stream:
            while stream.read(1 << 20):
                pass


def test_truncated_ciphertext_raises_and_an_early_close_leaves_nothing_running(
    tmp_path: Path, keys: tuple[Path, str, Path, str], backend: str
) -> None:
    akey, a, _, _ = keys
    res = write_artifact(tmp_path, sql(100_000), [a])
    path = tmp_path / res.file
    whole = path.read_bytes()
    ids = crypto.load_identities(akey)
    with crypto.unlocking(ids):
        stream = crypto.open_decrypted(path)
        assert stream.read(1000)
        raw = stream.raw  # type: ignore[attr-defined]
        if backend == "age":  # the identity went over a pipe: not in the process's argv
            argv = " ".join(raw._proc.args)
            assert "AGE-SECRET-KEY" not in argv.upper() and "/dev/fd/" in argv and str(akey) not in argv
        stream.close()
        if backend == "age":
            assert raw._proc.returncode is not None, "closed early: age was stopped and reaped"
        path.write_bytes(whole[: len(whole) - 100])
        with pytest.raises(crypto.DecryptionError, match="cannot decrypt"):
            _, plain = open_decompressed(path)
            with plain:
                while plain.read(1 << 20):
                    pass


def test_encryption_failure_mid_stream_aborts_cleanly(tmp_path: Path, keys: tuple[Path, str, Path, str]) -> None:
    _, a, _, _ = keys
    out = tmp_path / "out"
    out.mkdir()
    w = ArtifactWriter(out, "x", "mysql-sql", ".sql", recipients=[a])

    def full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    w._store = full  # type: ignore[method-assign]
    assert w._encrypt is not None
    w._encrypt._sink.emit = full
    with pytest.raises(OSError, match="No space"):
        for _ in range(200):
            w.write(os.urandom(1 << 20))
        w.close()
    w.abort()
    assert not list(out.iterdir())


# ------------------------------------------------------------------ configuration


def _cfg(tmp_path: Path, enc: dict[str, object], where: str = "global") -> Path:
    job: dict[str, object] = {"type": "files", "source": str(tmp_path), "schedule": "@daily"}
    if where == "job":
        job["encryption"] = enc
    settings = {"encryption": enc} if where == "global" else {}
    return write_config(tmp_path / "etc", {"site": job}, settings=settings)


def test_recipients_inline_and_from_a_file(tmp_path: Path, keys: tuple[Path, str, Path, str]) -> None:
    _, a, _, b = keys
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# backup keys\n{b}\n\n")
    config = load_config(_cfg(tmp_path, {"age_recipients": [a], "age_recipients_file": str(rfile),
                                         "identity_file": "/nonexistent/age.key"}))
    assert config.recipients_for("site") == [a, b]
    # a job's own table replaces the global one
    config = load_config(_cfg(tmp_path, {"age_recipients": [b]}, where="job"))
    assert config.recipients_for("site") == [b] and config.settings.encryption is None


@pytest.mark.parametrize(
    ("enc", "key", "words"),
    [
        ({"age_recipients": ["age1notakey"]}, "encryption.age_recipients[0]", "not a valid age recipient"),
        ({"age_recipients": ["ssh-ed25519 AAAA"]}, "encryption.age_recipients[0]", "not an age X25519 recipient"),
        ({"age_recipients_file": "/nonexistent/r.txt"}, "encryption.age_recipients_file", "does not exist"),
        ({"age_recipient": ["x"]}, "encryption.age_recipient", "unknown key"),
    ],
)
def test_bad_recipients_are_config_errors_naming_the_key(
    tmp_path: Path, enc: dict[str, object], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_cfg(tmp_path, enc))
    assert f": {key}: " in str(err.value) and words in str(err.value)


def test_empty_recipients_file_is_a_config_error(tmp_path: Path) -> None:
    rfile = tmp_path / "recipients.txt"
    rfile.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match=r"encryption\.age_recipients_file: file .* holds no recipient"):
        load_config(_cfg(tmp_path, {"age_recipients_file": str(rfile)}, where="job"))


def test_identity_file_problems_never_show_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "id.txt"
    bad.write_text("AGE-SECRET-KEY-1QQQQSECRETISH\n")
    with pytest.raises(ValueError, match="line 1 is not a valid age identity") as err:
        crypto.load_identities(bad)
    assert "SECRETISH" not in str(err.value)
    bad.write_text("# empty\n")
    with pytest.raises(ValueError, match="holds no age identity"):
        crypto.load_identities(bad)
