"""age encryption (X25519 recipients) for stored artifacts: the pipeline's encrypting stage, decryption on the
fly for every reader, recipients and identities from files, and the process's keyring (docs/security.md).

pyrage's streaming calls are pull-style (`encrypt_io(reader, writer)`, `decrypt_io(reader, writer)`), and run
in Rust with the GIL released while they encrypt. Each is adapted with an OS pipe and one thread: the
pipeline pushes compressed bytes into the pipe and the thread pulls them through age into the hashing file
writer; a reader of a stored artifact gets the pipe's read end while the thread decrypts into it. Memory
stays constant (the pipe and pyrage's 64 KiB chunks), nothing is buffered whole.

Decryption prefers the `age` binary when it is installed: pyrage calls back into Python for every 8 KiB it
reads and writes, so a reader that keeps the GIL busy (a format check, the native MongoDB restore) starves
the decrypting thread; `age -d` in its own process costs the reader nothing but the reads of its stdout.
The identities reach it over an inherited pipe (`-i /dev/fd/N`): never in argv, never on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from backupd.errors import BackupdError
from backupd.formats import agehdr

AGE_EXT = ".age"
IDENTITY_ENV = "BACKUPD_AGE_IDENTITY_FILE"
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
READ_BUFFER = 1 << 20


class DecryptionError(BackupdError):
    """An encrypted artifact could not be decrypted: no identity, a wrong one, or damaged ciphertext."""


# ------------------------------------------------------------------ recipients and identities


def fingerprint(recipient: str) -> str:
    """What manifests record of a recipient: never the key itself, enough to tell keys apart."""
    return hashlib.sha256(recipient.strip().lower().encode()).hexdigest()[:16]  # bech32: one case


def parse_recipient(text: str) -> Any:
    """An X25519 recipient ("age1..."); ValueError naming what is wrong."""
    text = text.strip()
    if not text.startswith("age1"):
        raise ValueError(f"{text[:12]!r}... is not an age X25519 recipient (age1...)")
    from pyrage import x25519  # loaded only by jobs that encrypt or restores that decrypt

    try:
        return x25519.Recipient.from_str(text)
    except Exception as exc:  # pyrage.RecipientError
        raise ValueError(f"{text[:12]}...: not a valid age recipient ({exc})") from None


def read_key_lines(path: Path) -> list[str]:
    """The non-blank, non-comment lines of a recipients or identity file (age-keygen's format)."""
    return [s for line in path.read_text().splitlines() if (s := line.strip()) and not s.startswith("#")]


def load_identities(path: Path) -> list[Any]:
    """The X25519 identities in an age identity file (as age-keygen writes it); ValueError if there are none
    or one does not parse (the message never holds the key)."""
    from pyrage import x25519

    out = []
    for n, line in enumerate(read_key_lines(path), 1):
        if not line.startswith("AGE-SECRET-KEY-1"):
            raise ValueError(f"line {n} is not an age identity (AGE-SECRET-KEY-1...)")
        try:
            out.append(x25519.Identity.from_str(line))
        except Exception:  # pyrage.IdentityError; its message could quote the key
            raise ValueError(f"line {n} is not a valid age identity") from None
    if not out:
        raise ValueError("holds no age identity")
    return out


def public_fingerprints(identities: Sequence[Any]) -> set[str]:
    return {fingerprint(str(i.to_public())) for i in identities}


# ------------------------------------------------------------------ the process's keyring

_keyring: list[Any] = []
_keyring_lock = threading.Lock()


@contextlib.contextmanager
def unlocking(identities: Sequence[Any]) -> Iterator[None]:
    """Make `identities` available to every reader of stored artifacts while the block runs (restore, drill,
    verify). Additive, so two drills of the daemon never take each other's keys away."""
    with _keyring_lock:
        _keyring.extend(identities)
    try:
        yield
    finally:
        with _keyring_lock:
            for ident in identities:
                _keyring.remove(ident)


def active_identities() -> list[Any]:
    with _keyring_lock:
        return list(_keyring)


# ------------------------------------------------------------------ encrypting (the pipeline's stage)


class _Sink:
    """The writer pyrage writes ciphertext into."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self.emit = emit
        self.error: BaseException | None = None  # what emit raised (pyrage wraps it in an EncryptError)

    def write(self, data: bytes) -> int:
        try:
            self.emit(bytes(data))
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        pass


def _big_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    with contextlib.suppress(OSError):  # fewer wake-ups; not fatal if refused
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


class EncryptStage:
    """Push bytes in with `write()`; age ciphertext comes out through `emit` (called from this stage's thread).
    `close()` ends the stream and raises what went wrong on either side (e.g. ENOSPC in `emit`)."""

    def __init__(self, recipients: Sequence[str], emit: Callable[[bytes], None], name: str = "artifact") -> None:
        self._recipients = [parse_recipient(r) for r in recipients]
        r, w = _big_pipe()
        self._rfile = os.fdopen(r, "rb", buffering=READ_BUFFER)
        self._wfd: int | None = w
        self._sink = _Sink(emit)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=f"encrypt-{name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            import pyrage

            pyrage.encrypt_io(self._rfile, self._sink, self._recipients)
        except BaseException as exc:  # reported by close(); the writer side sees a broken pipe
            self.error = self._sink.error or exc  # ENOSPC as itself, not wrapped
        finally:
            self._rfile.close()  # a writer still pushing gets EPIPE instead of blocking

    def write(self, data: bytes) -> None:
        assert self._wfd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._wfd, view) :]
        except BrokenPipeError:
            self._end()
            if self.error is not None:
                raise self.error from None
            raise

    def _end(self) -> None:
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        self._thread.join()

    def close(self) -> None:
        self._end()
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ decrypting (every reader)


class _DecryptedReader(io.RawIOBase):
    """The read end of the pipe a decrypting thread writes into; EOF raises the thread's error, if any."""

    def __init__(self, path: Path, identities: Sequence[Any]) -> None:
        super().__init__()
        self.path = path
        r, w = _big_pipe()
        self._r = r
        self._w = w
        self._src = path.open("rb")
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(list(identities),), name="decrypt", daemon=True)
        self._thread.start()

    def _work(self, identities: list[Any]) -> None:
        out = os.fdopen(self._w, "wb", buffering=0)
        try:
            import pyrage

            pyrage.decrypt_io(self._src, out, identities)
        except BrokenPipeError:
            pass  # the reader stopped early (closed us)
        except BaseException as exc:
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                out.close()
            self._src.close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = os.readv(self._r, [buffer])
        if n == 0:
            self._thread.join()
            if self.error is not None:
                raise DecryptionError(f"{self.path.name}: cannot decrypt: {self.error}")
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._r)  # the thread's next write fails with EPIPE and it ends
            self._thread.join()
        super().close()


class _AgeProcessReader(io.RawIOBase):
    """The stdout of `age -d` decrypting `path`; EOF raises age's error, if it failed. Closing early kills it
    (by the PID we started)."""

    def __init__(self, path: Path, identities: Sequence[Any], tool: str) -> None:
        super().__init__()
        self.path = path
        keys_r, keys_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [tool, "--decrypt", "--identity", f"/dev/fd/{keys_r}", "--", str(path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(keys_r,),
            )  # fmt: skip
        except BaseException:
            os.close(keys_w)
            raise
        finally:
            os.close(keys_r)
        secret = memoryview("".join(f"{i}\n" for i in identities).encode())
        try:
            while secret:  # a few hundred bytes: fits the pipe, age reads it before anything else
                secret = secret[os.write(keys_w, secret) :]
        except BrokenPipeError:
            pass  # age already exited; its status says why
        finally:
            os.close(keys_w)
        assert self._proc.stdout is not None
        self._fd = self._proc.stdout.fileno()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = os.readv(self._fd, [buffer])
        if n == 0:
            assert self._proc.stderr is not None
            err = self._proc.stderr.read(1 << 16).decode("utf-8", "replace")  # age says a line or two
            if self._proc.wait() != 0:
                lines = [x.strip() for x in err.splitlines() if x.startswith("age: error:")] or [err.strip()]
                why = lines[0].removeprefix("age: error:").strip() or f"age exited {self._proc.returncode}"
                raise DecryptionError(f"{self.path.name}: cannot decrypt: {why}")
        return n

    def close(self) -> None:
        if not self.closed:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for fh in (self._proc.stdout, self._proc.stderr):
                if fh is not None:
                    fh.close()
        super().close()


def age_binary() -> str | None:
    """The `age` binary decryption runs in, when it is installed (else pyrage, in a thread)."""
    return shutil.which("age")


def is_encrypted(path: Path) -> bool:
    with path.open("rb") as fh:
        return agehdr.is_age(fh.read(len(agehdr.MAGIC)))


def open_decrypted(path: Path, identities: Sequence[Any] | None = None) -> BinaryIO:
    """The plaintext (still compressed) bytes of an age-encrypted file, decrypted as they are read.

    The first read happens here, so a missing or wrong identity raises DecryptionError before the caller
    writes anything anywhere."""
    ids = list(identities) if identities is not None else active_identities()
    if not ids:
        raise DecryptionError(f"{path.name}: encrypted, and no age identity was given")
    tool = age_binary()
    raw = _AgeProcessReader(path, ids, tool) if tool is not None else _DecryptedReader(path, ids)
    stream = io.BufferedReader(raw, buffer_size=READ_BUFFER)
    try:
        stream.peek(1)
    except DecryptionError:
        stream.close()
        raise
    return stream


def can_decrypt(path: Path, identities: Sequence[Any]) -> bool:
    """Whether one of `identities` unlocks this file (its header only: the first chunk is read)."""
    try:
        with open_decrypted(path, identities):
            return True
    except DecryptionError:
        return False
