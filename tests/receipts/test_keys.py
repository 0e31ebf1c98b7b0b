"""Signing keys: load (PEM, raw seed, hex seed), generate (0600, no overwrite), trusted public keys."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard_otel.errors import ConfigError
from agentguard_otel.receipts import SigningKey, key_id_of, load_public_keys
from agentguard_otel.receipts.keys import signature_valid

SEED = bytes(range(32))


def expected_key_id(seed: bytes) -> str:
    raw = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def test_generate_writes_a_0600_private_key_and_a_public_key(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "new" / "dir" / "agentguard.key"
    key = SigningKey.generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert re.fullmatch(r"ed25519:[0-9a-f]{16}", key.key_id)
    assert Path(f"{path}.pub").read_bytes() == key.public_key_pem()
    assert SigningKey.load(path).key_id == key.key_id
    assert list(load_public_keys([Path(f"{path}.pub")])) == [key.key_id]


def test_generate_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "agentguard.key"
    first = SigningKey.generate(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        SigningKey.generate(path)
    assert path.read_bytes() == before
    assert SigningKey.load(path).key_id == first.key_id


def test_key_id_is_the_sha256_prefix_of_the_raw_public_key(tmp_path: Path) -> None:
    (tmp_path / "seed").write_bytes(SEED)
    key = SigningKey.load(tmp_path / "seed")
    assert key.key_id == expected_key_id(SEED) == key_id_of(key.public_key)


@pytest.mark.parametrize("content", [SEED.hex().encode(), SEED.hex().encode() + b"\n",
                                     SEED.hex().upper().encode()])
def test_load_accepts_a_hex_seed(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "hex.key").write_bytes(content)
    assert SigningKey.load(tmp_path / "hex.key").key_id == expected_key_id(SEED)


def test_load_reads_a_pkcs8_pem_key(tmp_path: Path) -> None:
    pem = Ed25519PrivateKey.from_private_bytes(SEED).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "k.pem").write_bytes(pem)
    assert SigningKey.load(tmp_path / "k.pem").key_id == expected_key_id(SEED)


def _rsa_pem() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _encrypted_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "found an empty file"),
    (bytes(33), "found 33 bytes of binary data"),
    (SEED.hex().encode() + b"0\n", "found 66 characters of text"),
    (b"hello", "found 5 characters of text"),
    (Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "holds a public key"),
    (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
     "found OPENSSH PRIVATE KEY"),
    (_encrypted_pem(), "encrypted"),
    (_rsa_pem(), r"non-Ed25519 key \(RSAPrivateKey\)"),
])
def test_load_names_what_a_bad_key_file_holds(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        SigningKey.load(path)
    assert str(path) in str(caught.value)


def test_load_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file: No such file"):
        SigningKey.load(tmp_path / "absent.key")


def test_a_keys_file_is_pem_public_keys_with_comments(tmp_path: Path) -> None:
    one, two = SigningKey.generate(tmp_path / "one.key"), SigningKey.generate(tmp_path / "two.key")
    keys_file = tmp_path / "team.keys"
    keys_file.write_bytes(b"# team signing keys\n\n" + one.public_key_pem()
                          + b"# second\n" + two.public_key_pem())
    keys = load_public_keys([keys_file, tmp_path / "one.key.pub"])
    assert set(keys) == {one.key_id, two.key_id}
    assert keys[two.key_id].public_bytes_raw() == two.public_key.public_bytes_raw()


def test_text_outside_pem_blocks_is_an_error_with_its_line(tmp_path: Path) -> None:
    key = SigningKey.generate(tmp_path / "one.key")
    keys_file = tmp_path / "team.keys"
    keys_file.write_bytes(key.public_key_pem() + b"\nstray text\n")
    with pytest.raises(ConfigError, match=r"team.keys:5: unexpected text outside a PEM block"):
        load_public_keys([keys_file])


@pytest.mark.parametrize(("content", "message"), [
    (Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()), "holds a private key"),
    (SEED, "raw private key seed"),
    (SEED.hex().encode() + b"\n", "raw private key seed"),
    (b"", "no PEM PUBLIC KEY block found; found an empty file"),
    (rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "non-Ed25519 key"),
])
def test_only_ed25519_public_keys_are_trusted(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "trusted"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_public_keys([path])


def test_a_private_key_file_is_refused_as_a_trusted_key(tmp_path: Path) -> None:
    SigningKey.generate(tmp_path / "agentguard.key")
    with pytest.raises(ConfigError, match="only public keys are trusted"):
        load_public_keys([tmp_path / "agentguard.key"])


# -- the libsodium signer agrees with cryptography's ----------------------------------------------

@settings(max_examples=200)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=200))
def test_libsodium_and_cryptography_sign_identically_and_verify_each_other(seed: bytes, message: bytes) -> None:
    openssl_key = Ed25519PrivateKey.from_private_bytes(seed)
    key = SigningKey(openssl_key)
    sodium_signature = key.sign(message)
    openssl_signature = openssl_key.sign(message)
    assert sodium_signature == openssl_signature  # Ed25519 is deterministic
    public_raw = key.public_key.public_bytes_raw()
    key.public_key.verify(sodium_signature, message)  # raises InvalidSignature if not
    assert signature_valid(public_raw, openssl_signature, message)
    forged = bytes([openssl_signature[0] ^ 1]) + openssl_signature[1:]
    assert not signature_valid(public_raw, forged, message)
    with pytest.raises(InvalidSignature):
        key.public_key.verify(forged, message)


@pytest.mark.parametrize("length", [0, 63, 65])
def test_a_signature_of_the_wrong_length_is_invalid(length: int) -> None:
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(SEED))
    signature = (key.sign(b"data") * 2)[:length]
    assert not signature_valid(key.public_key.public_bytes_raw(), signature, b"data")


def test_a_key_written_before_signs_the_same_after(tmp_path: Path) -> None:
    """A PEM key made by cryptography alone loads and signs with libsodium to the same bytes."""
    openssl_key = Ed25519PrivateKey.from_private_bytes(SEED)
    path = tmp_path / "old.key"
    path.write_bytes(openssl_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    assert SigningKey.load(path).sign(b"digest") == openssl_key.sign(b"digest")
