"""Optional Ed25519 signature on a bundle's manifest: refuse a model that was not released by the key holder.

``load_bundle`` already refuses a bundle whose files do not match the sha256 listed in ``manifest.json``; but
anyone who can write the folder can also rewrite the manifest. A signature over the manifest bytes closes that
gap: the manifest lists the sha256 of every model file, so signing the manifest signs the whole bundle (the
calibration file is bound separately, to the manifest's sha256, and stays replaceable by site recalibration).

Files::

    manifest.sig        base64 (one line) of the 64-byte Ed25519 signature over the exact manifest.json bytes
    sonogate_signing_key.pem   PKCS#8 private key (keep it off the carts; mode 0600)
    sonogate_signing_key.pub.pem  SubjectPublicKeyInfo public key (install it on the carts)

Every failure raises ``sonogate.errors.BundleError`` with one line. This module never imports torch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from sonogate.core.bundle import MANIFEST, Bundle, load_bundle
from sonogate.errors import BundleError

SIGNATURE = "manifest.sig"
PRIVATE_KEY_NAME = "sonogate_signing_key.pem"
PUBLIC_KEY_NAME = "sonogate_signing_key.pub.pem"
_SIGNATURE_BYTES = 64


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - cryptography is a runtime dependency
        raise BundleError("bundle signatures need the 'cryptography' package: pip install cryptography") from None
    return serialization, ed25519, InvalidSignature


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise BundleError(f"{what} is a folder, not a file: {path}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _raw_public(public_key) -> bytes:
    serialization, _, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public_key) -> str:
    """Short id of a public key: first 16 hex digits of sha256 of its 32 raw bytes."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def load_private_key(path: str | os.PathLike):
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BundleError(f"private key {path} is encrypted; sonogate expects an unencrypted PEM key") from None
    except (ValueError, binascii.Error):
        raise BundleError(f"private key {path} is not a PEM private key") from None
    except Exception as exc:  # noqa: BLE001 - cryptography raises library-specific errors for junk
        raise BundleError(f"private key {path} is unreadable ({type(exc).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(f"private key {path} is not an Ed25519 key")
    return key


def load_public_key(path: str | os.PathLike):
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, binascii.Error):
        raise BundleError(f"public key {path} is not a PEM public key") from None
    except Exception as exc:  # noqa: BLE001
        raise BundleError(f"public key {path} is unreadable ({type(exc).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError(f"public key {path} is not an Ed25519 key")
    return key


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike) -> str:
    """Write a new Ed25519 key pair (PEM; the private file with mode 0600). Refuses to overwrite a file.

    Returns the public key fingerprint.
    """
    serialization, ed25519, _ = _crypto()
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists():
            raise BundleError(f"refusing to overwrite existing key file {path}")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise BundleError(f"cannot write key files: {exc.strerror or exc}") from None
    return key_fingerprint(key.public_key())


def sign_bundle(bundle_dir: str | os.PathLike, private_key_pem_path: str | os.PathLike) -> Path:
    """Verify the bundle (every file's sha256), then write ``manifest.sig`` over the manifest bytes.

    Returns the signature path. A bundle whose files do not match its manifest is refused, never signed.
    """
    bundle_dir = Path(bundle_dir)
    key = load_private_key(private_key_pem_path)
    bundle = load_bundle(bundle_dir)  # raises BundleError on any mismatch
    if SIGNATURE in bundle.manifest.get("files", {}):
        raise BundleError(f"bundle manifest lists {SIGNATURE} as a bundle file, so signing would break its sha256; "
                          f"delete {SIGNATURE}, rewrite the manifest, then sign")
    manifest = _read(bundle_dir / MANIFEST, "bundle manifest")
    if hashlib.sha256(manifest).hexdigest() != bundle.bundle_hash:
        raise BundleError(f"bundle manifest {bundle_dir / MANIFEST} changed while signing; try again")
    signature = key.sign(manifest)
    path = bundle_dir / SIGNATURE
    tmp = path.with_name(SIGNATURE + ".tmp")
    try:
        tmp.write_bytes(base64.b64encode(signature) + b"\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _read_signature(bundle_dir: Path) -> bytes:
    path = bundle_dir / SIGNATURE
    if not path.is_file():
        raise BundleError(f"bundle {bundle_dir} is not signed (no {SIGNATURE}); refusing an unsigned model")
    data = _read(path, "bundle signature")
    try:
        signature = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"bundle signature {path} is malformed (not base64)") from None
    if len(signature) != _SIGNATURE_BYTES:
        raise BundleError(f"bundle signature {path} is malformed ({len(signature)} bytes, expected 64)")
    return signature


def verify_manifest_signature(bundle_dir: str | os.PathLike, public_key_pem_path: str | os.PathLike) -> str:
    """Check ``manifest.sig`` against ``manifest.json``; return the sha256 of the manifest bytes that were
    verified (compare it with ``Bundle.bundle_hash`` to tie the signature to the loaded bundle)."""
    _, _, invalid_signature = _crypto()
    bundle_dir = Path(bundle_dir)
    key = load_public_key(public_key_pem_path)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder not found: {bundle_dir}")
    signature = _read_signature(bundle_dir)
    manifest = _read(bundle_dir / MANIFEST, "bundle manifest")
    try:
        key.verify(signature, manifest)
    except invalid_signature:
        raise BundleError(f"bundle {bundle_dir} signature does not match its manifest for key "
                          f"{key_fingerprint(key)} (tampered, or signed with another key)") from None
    return hashlib.sha256(manifest).hexdigest()


def verify_bundle_signature(bundle_dir: str | os.PathLike, public_key_pem_path: str | os.PathLike) -> None:
    """Raise ``BundleError`` (one line) when the signature is missing, malformed or wrong for the key."""
    verify_manifest_signature(bundle_dir, public_key_pem_path)


def load_verified_bundle(bundle_dir: str | os.PathLike | Bundle,
                         public_key_pem_path: str | os.PathLike | None = None) -> Bundle:
    """``load_bundle`` (every file's sha256) plus, when a public key is given, the manifest signature.

    The signature is checked on the same manifest bytes the bundle was loaded from (their sha256 must equal
    ``Bundle.bundle_hash``), so a manifest swapped between the two reads is refused too.
    """
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir)
    if public_key_pem_path is None:
        return bundle
    signed_hash = verify_manifest_signature(bundle.path, public_key_pem_path)
    if signed_hash != bundle.bundle_hash:
        raise BundleError(f"bundle {bundle.path} manifest changed after it was loaded; refusing it")
    return bundle
