"""Ed25519 signing keys and the trusted public keys ``verify`` accepts.

A key id is ``"ed25519:" + first 16 hex digits of sha256(raw 32-byte public key)``: short enough for
every receipt, long enough (64 bits) that two keys of one deployment never share it.

Keys are read and written with ``cryptography`` (PEM PKCS8 / SubjectPublicKeyInfo); signatures are made
and checked with libsodium through PyNaCl, about twice as fast. Ed25519 is deterministic, so both give
the same signature bytes for the same key and message.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

from agentguard_otel.errors import ConfigError

StrPath = str | os.PathLike[str]

_MAX_KEY_FILE = 1 << 20
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_HEX_SEED = re.compile(rb"[0-9a-fA-F]{64}(\r?\n)?")
_EXPECTED = ("expected a PEM PKCS8 Ed25519 private key (BEGIN PRIVATE KEY), a raw 32-byte seed "
             "or 64 hex characters")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The receipt ``key_id`` of a public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class SigningKey:
    """The Ed25519 private key receipts are signed with. It never leaves the process."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)
        self._secret = crypto_sign_seed_keypair(private_key.private_bytes_raw())[1]

    @classmethod
    def load(cls, path: StrPath) -> SigningKey:
        """Read a PEM PKCS8 private key, a raw 32-byte seed, or a seed as 64 hex digits (+ newline)."""
        data = _read_key_file(path)
        if b"-----BEGIN" in data:
            return cls(_pem_private_key(path, data))
        if len(data) == 32:
            return cls(Ed25519PrivateKey.from_private_bytes(data))
        if _HEX_SEED.fullmatch(data):
            return cls(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data[:64].decode("ascii"))))
        raise ConfigError(f"{path}: not an Ed25519 signing key: {_EXPECTED}; found {_describe(data)}")

    @classmethod
    def generate(cls, path: StrPath) -> SigningKey:
        """Create a new key at ``path`` (PEM, mode 0600 from the moment the file exists; an existing file
        is never overwritten) and its public key at ``<path>.pub``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        key = cls(Ed25519PrivateKey.generate())
        pem = key._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ConfigError(f"{target}: file exists; refusing to overwrite a signing key") from None
        try:
            os.fchmod(fd, 0o600)  # exact mode whatever the umask
            _write_all(fd, pem)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            target.unlink()
            raise
        os.close(fd)
        public = Path(f"{target}.pub")
        staging = public.with_name(f".{public.name}.{os.getpid()}.tmp")
        staging.write_bytes(key.public_key_pem())
        os.replace(staging, public)  # a stale .pub of an older key is replaced whole, never half-written
        return key

    def public_key_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM: the form ``load_public_keys`` and ``agentguard verify`` take."""
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (libsodium's combined form starts with it)."""
        return crypto_sign(data, self._secret)[:64]

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id})"


def signature_valid(public_raw: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``data`` by the raw 32-byte public key."""
    if len(signature) != 64:  # libsodium takes signature and message as one string: fix the split
        return False
    try:
        crypto_sign_open(signature + data, public_raw)
    except BadSignatureError:
        return False
    return True


def load_public_keys(paths: Iterable[StrPath]) -> dict[str, Ed25519PublicKey]:
    """Trusted keys by key id, from public key files.

    Every path is a *keys file*: one or more PEM ``PUBLIC KEY`` blocks (Ed25519 SubjectPublicKeyInfo)
    one after another, so a single ``agentguard.key.pub`` is a keys file and ``cat a.pub b.pub >
    team.keys`` makes one. Between blocks only blank lines and ``#`` comment lines are allowed. A file
    holding a private key (PEM, raw seed or hex seed) is refused: trust comes only from public keys.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        for key in _public_keys_in(path, _read_key_file(path)):
            key_id = key_id_of(key)
            known = keys.setdefault(key_id, key)
            if known.public_bytes_raw() != key.public_bytes_raw():
                raise ConfigError(f"{path}: two different public keys share key id {key_id}")
    return keys


def _public_keys_in(path: StrPath, data: bytes) -> list[Ed25519PublicKey]:
    if len(data) == 32 or _HEX_SEED.fullmatch(data):
        raise ConfigError(f"{path}: looks like a raw private key seed; only PEM public keys are trusted")
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise ConfigError(f"{path}: no PEM PUBLIC KEY block found; found {_describe(data)}")
    found: list[Ed25519PublicKey] = []
    end = 0
    for block in blocks:
        _only_comments(path, data, end, block.start())
        end = block.end()
        label = block.group(1).decode("ascii")
        if "PRIVATE" in label:
            raise ConfigError(f"{path}: holds a private key ({label}); give verify the public key "
                              "(the .pub file) — only public keys are trusted")
        if label != "PUBLIC KEY":
            raise ConfigError(f"{path}: found a PEM {label} block; expected PUBLIC KEY blocks")
        try:
            key = serialization.load_pem_public_key(block.group(0))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"{path}: unreadable PUBLIC KEY block: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path}: found a non-Ed25519 key ({type(key).__name__}); expected Ed25519")
        found.append(key)
    _only_comments(path, data, end, len(data))
    return found


def _only_comments(path: StrPath, data: bytes, start: int, end: int) -> None:
    offset = start
    for line in data[start:end].splitlines(keepends=True):
        text = line.strip()
        if text and not text.startswith(b"#"):
            line_no = data.count(b"\n", 0, offset) + 1
            raise ConfigError(f"{path}:{line_no}: unexpected text outside a PEM block "
                              "(a keys file holds PEM PUBLIC KEY blocks, blank lines and # comments)")
        offset += len(line)


def _pem_private_key(path: StrPath, data: bytes) -> Ed25519PrivateKey:
    block = _PEM_BLOCK.search(data)
    label = block.group(1).decode("ascii") if block else "malformed PEM"
    if label == "PUBLIC KEY":
        raise ConfigError(f"{path}: holds a public key; the signing key must be the private key")
    if label == "ENCRYPTED PRIVATE KEY":
        raise ConfigError(f"{path}: the private key is encrypted; give an unencrypted PKCS8 key (mode 0600)")
    if label != "PRIVATE KEY":
        raise ConfigError(f"{path}: not an Ed25519 signing key: {_EXPECTED}; found {label}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: unreadable PKCS8 private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: found a non-Ed25519 key ({type(key).__name__}); expected Ed25519")
    return key


def _read_key_file(path: StrPath) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise ConfigError(f"{path}: not a key file (larger than {_MAX_KEY_FILE} bytes)")
    return data


def _describe(data: bytes) -> str:
    """What a file holds, without echoing its bytes (it may be a secret in the wrong format)."""
    if not data:
        return "an empty file"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(data)} bytes of binary data"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"{len(text)} characters of text"
    return f"{len(data)} bytes of binary data"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
