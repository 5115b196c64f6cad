"""Signing keys (ECDSA P-256): make a key pair, load a private key for signing, load a
public key as the raw 65-byte point the device pins (`hanfw.p256` checks it is on the curve).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hanfw import p256

from .errors import KeyFileError


@dataclass(frozen=True)
class KeyPaths:
    private: Path
    public: Path
    public_bin: Path


def generate_keys(out_dir: str | os.PathLike) -> KeyPaths:
    """Write a new P-256 key pair: private.pem, public.pem, public.bin (raw 65-byte point).

    Refuses to overwrite any existing key file.
    """
    out = Path(out_dir)
    paths = KeyPaths(out / "private.pem", out / "public.pem", out / "public.bin")
    existing = [str(p) for p in (paths.private, paths.public, paths.public_bin) if p.exists()]
    if existing:
        raise KeyFileError("refusing to overwrite existing key file(s): %s" % ", ".join(existing),
                           reason="key-exists")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(paths.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key()
    paths.public.write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    paths.public_bin.write_bytes(raw_point(pub))
    return paths


def raw_point(pub: ec.EllipticCurvePublicKey) -> bytes:
    """The public key as the uncompressed point 04||X||Y (65 bytes), as devices pin it."""
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def load_private_key(path: str | os.PathLike) -> ec.EllipticCurvePrivateKey:
    """Load a P-256 private key from PEM (PKCS8 or SEC1)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError("cannot read private key %s: %s" % (path, e.strerror), reason="key-missing")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError("%s is not an unencrypted PEM private key (%s)" % (path, e), reason="key-format")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError("%s is not a P-256 (secp256r1) key" % path, reason="key-format")
    return key


def load_public_key(path: str | os.PathLike) -> bytes:
    """Load a public key as the raw 65-byte point, from public.bin or a PEM file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise KeyFileError("cannot read public key %s: %s" % (path, e.strerror), reason="key-missing")
    if len(data) == 65 and data[0] == 4:
        point = data
    else:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise KeyFileError("%s is neither a 65-byte raw P-256 point nor a PEM public key" % path,
                               reason="key-format")
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError("%s is not a P-256 (secp256r1) public key" % path, reason="key-format")
        point = raw_point(key)
    if not p256.is_valid_point(point):
        raise KeyFileError("%s does not hold a point on the P-256 curve" % path, reason="key-format")
    return point
