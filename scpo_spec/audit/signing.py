"""Ed25519 signatures of a log's head (`scpo keygen`, `scpo train --sign KEY`,
`scpo audit --key PUB`).

The head hash identifies the whole chain, so signing it signs every record.  A signature only
means something against a public key the reviewer obtained elsewhere: the signature file names
the key it was made with, but a forger can re-hash a log and sign it with a key of their own, so
without `--key` a signature is reported as "unverified", never as valid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from scpo_spec.audit.files import UnreadableFile, read_regular
from scpo_spec.errors import ScpoError

ALGORITHM = "ed25519"
SIGNATURE_LIMIT = 2**16  # bytes of RUN/signature.json a reader takes (one is under 400)


class SigningError(ScpoError):
    """A key file that cannot be read or is not an Ed25519 key."""


def keygen(private_path: Path) -> Path:
    """Write a new private key (PEM, PKCS8, readable by its owner only) and `<path>.pub`."""
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise SigningError(f"{p} already exists; a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        public_path.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    except OSError as e:
        raise SigningError(f"cannot write the key: {e.strerror or e} ({e.filename})") from None
    return public_path


def _load(path: Path, private: bool):
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SigningError(f"cannot read key {path}: {e.strerror or e}") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError):
        raise SigningError(f"{path} is not a PEM {'private' if private else 'public'} key") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise SigningError(f"{path} is not an Ed25519 key")
    return key


def _raw(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def check_private_key(private_path: Path) -> None:
    """SigningError unless `private_path` is a readable Ed25519 private key (before training)."""
    _load(private_path, private=True)


def check_public_key(public_path: Path) -> None:
    """SigningError unless `public_path` is a readable Ed25519 public key."""
    _load(public_path, private=False)


def sign_head(private_path: Path, head: str, out: Path) -> None:
    """Sign the head's hex text and write the signature file."""
    key = _load(private_path, private=True)
    record = {"algorithm": ALGORITHM, "head": head,
              "signature": key.sign(head.encode()).hex(), "public_key": _raw(key.public_key())}
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def verify_signature(sig_path: Path, head: str, public_path: Path | None) -> str:
    """'valid' only when the file signs exactly `head` with the key at `public_path`;
    otherwise a short reason ('unverified: …' when no key was given)."""
    try:
        record = json.loads(read_regular(sig_path, SIGNATURE_LIMIT).decode("utf-8"))
        signature = bytes.fromhex(record["signature"])
        signed = record["head"]
    except FileNotFoundError:
        return "invalid: the run has no signature file"
    except UnreadableFile as e:
        return f"invalid: {e}"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return "invalid: the signature file cannot be read"
    if signed != head:
        return "invalid: the signature is of another head (the log changed since it was signed)"
    if public_path is None:
        return (f"unverified: signed by key {str(record.get('public_key'))[:16]}…; pass the "
                "signer's public key (--key) to check it")
    key = _load(public_path, private=False)
    try:
        key.verify(signature, head.encode())
    except InvalidSignature:
        return "invalid: the signature does not verify with the given public key"
    return "valid"
