"""Ed25519 keys for audit heads: whoever holds the private key signs heads, an auditor holding
only the public key checks them and cannot make one.

Keys are PEM files (PKCS#8 private key, mode 0600; SubjectPublicKeyInfo public key). Parsing a
PEM file runs no code; a file holding any other kind of key is refused by name.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "ed25519"


class KeyFileError(ValueError):
    """A signing or public key file that is missing, unreadable or not an Ed25519 key."""


def generate(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (never over an existing private key); returns the public key's id."""
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists():
        raise KeyFileError(f"{private_path} already exists: a new key would not verify the heads signed with it; "
                           "move it away first if you mean to rotate")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    public = key.public_key()
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(public)


def load_private(path: Path) -> Ed25519PrivateKey:
    key = _parse(path, lambda data: serialization.load_pem_private_key(data, password=None))
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key in PEM (make one with `riskengine audit keygen`)")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    key = _parse(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key in PEM (the .pub file `riskengine audit keygen` wrote)")
    return key


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file ({exc.strerror or exc})") from None


def _parse(path: Path, loader: Callable[[bytes], object]) -> object:
    try:
        return loader(_read(path))
    except (ValueError, TypeError, UnsupportedAlgorithm):     # not PEM, encrypted, or an unknown kind of key
        return None


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (shown, never trusted: verification uses the key itself)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def valid(public: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    try:
        public.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
