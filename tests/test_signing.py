"""Ed25519 bundle signatures: a signed bundle verifies; a missing, malformed or wrong signature, a changed
manifest or model, or the wrong key is refused with one line (BundleError / exit 2)."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from sonogate.core.bundle import load_bundle, write_manifest
from sonogate.core.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    SIGNATURE,
    generate_keypair,
    load_verified_bundle,
    sign_bundle,
    verify_bundle_signature,
)
from sonogate.errors import BundleError
from tests.tiny_bundle import write_tiny_bundle

pytestmark = pytest.mark.torchfree


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "a.pem", folder / "a.pub.pem")
    generate_keypair(folder / "b.pem", folder / "b.pub.pem")
    return folder


@pytest.fixture
def signed(tmp_path, keys):
    folder = write_tiny_bundle(tmp_path / "bundle")
    sign_bundle(folder, keys / "a.pem")
    return folder


def _one_line_error(func, *args, match=None):
    with pytest.raises(BundleError, match=match) as err:
        func(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_keygen_writes_a_private_key_only_the_owner_can_read(tmp_path):
    fingerprint = generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    assert len(fingerprint) == 16
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in (tmp_path / "k.pem").read_bytes()
    assert b"PUBLIC KEY" in (tmp_path / "k.pub.pem").read_bytes()
    _one_line_error(generate_keypair, tmp_path / "k.pem", tmp_path / "other.pub.pem", match="overwrite")


def test_a_signed_bundle_verifies(signed, keys):
    signature = (signed / SIGNATURE).read_bytes()
    assert len(base64.b64decode(signature.strip())) == 64
    verify_bundle_signature(signed, keys / "a.pub.pem")
    bundle = load_verified_bundle(signed, keys / "a.pub.pem")
    assert bundle.bundle_hash == load_bundle(signed).bundle_hash
    assert load_verified_bundle(bundle, keys / "a.pub.pem") is bundle
    assert load_verified_bundle(signed).bundle_hash == bundle.bundle_hash  # no key: hashes only


def test_missing_malformed_and_wrong_signatures_are_refused(signed, keys):
    _one_line_error(verify_bundle_signature, signed, keys / "b.pub.pem", match="another key")
    sig = signed / SIGNATURE
    good = sig.read_bytes()
    sig.write_bytes(b"not base64 !!!\n")
    _one_line_error(verify_bundle_signature, signed, keys / "a.pub.pem", match="malformed")
    sig.write_bytes(base64.b64encode(b"\x00" * 63))
    _one_line_error(verify_bundle_signature, signed, keys / "a.pub.pem", match="malformed")
    flipped = bytearray(base64.b64decode(good))
    flipped[10] ^= 0x01
    sig.write_bytes(base64.b64encode(bytes(flipped)))
    _one_line_error(verify_bundle_signature, signed, keys / "a.pub.pem", match="does not match")
    sig.unlink()
    _one_line_error(verify_bundle_signature, signed, keys / "a.pub.pem", match="not signed")
    _one_line_error(load_verified_bundle, signed, keys / "a.pub.pem", match="not signed")
    _one_line_error(verify_bundle_signature, signed.parent / "nowhere", keys / "a.pub.pem", match="not found")


def test_a_rewritten_manifest_is_refused(signed, keys):
    """Swap the model AND rewrite the manifest's hashes: sha256 checks pass, the signature does not."""
    model = signed / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_verified_bundle(signed, keys / "a.pub.pem")
    manifest = json.loads((signed / "manifest.json").read_text())
    write_manifest(signed, {k: v for k, v in manifest.items() if k not in ("files", "format_version")})
    load_bundle(signed)  # the hashes alone now look fine
    _one_line_error(load_verified_bundle, signed, keys / "a.pub.pem", match="does not match its manifest")
    if SIGNATURE in json.loads((signed / "manifest.json").read_text())["files"]:
        # bundle.write_manifest lists manifest.sig as a bundle file: re-signing would break the sha256 check
        _one_line_error(sign_bundle, signed, keys / "a.pem", match="lists manifest.sig")


def test_one_changed_manifest_byte_is_refused(signed, keys):
    manifest = signed / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b"Apache-2.0", b"Apache-2.1"))
    _one_line_error(verify_bundle_signature, signed, keys / "a.pub.pem", match="does not match")


def test_a_manifest_swapped_after_loading_is_refused(signed, keys):
    bundle = load_bundle(signed)
    manifest = signed / "manifest.json"
    manifest.write_bytes(manifest.read_bytes() + b" ")
    sign_bundle(signed, keys / "a.pem")  # even a valid signature on the new bytes
    _one_line_error(load_verified_bundle, bundle, keys / "a.pub.pem", match="changed after it was loaded")


def test_bad_keys_are_one_line_errors(signed, keys, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    _one_line_error(verify_bundle_signature, signed, garbage)
    _one_line_error(verify_bundle_signature, signed, keys / "a.pem")  # a private key given as public
    _one_line_error(verify_bundle_signature, signed, tmp_path / "absent.pub.pem", match="not found")
    _one_line_error(sign_bundle, signed, keys / "a.pub.pem")  # a public key given as private
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (tmp_path / "ec.pub.pem").write_bytes(other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    _one_line_error(sign_bundle, signed, tmp_path / "ec.pem", match="not an Ed25519")
    _one_line_error(verify_bundle_signature, signed, tmp_path / "ec.pub.pem", match="not an Ed25519")


def test_a_tampered_bundle_is_never_signed(tmp_path, keys):
    folder = write_tiny_bundle(tmp_path / "bundle")
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    _one_line_error(sign_bundle, folder, keys / "a.pem", match="sha256")
    assert not (folder / SIGNATURE).exists()


def test_a_verified_bundle_runs_in_a_session(signed, keys):
    import numpy as np

    from sonogate.runtime.session import Session

    with Session(load_verified_bundle(signed, keys / "a.pub.pem"), device="ort-cpu", detect_roi=False) as session:
        event = session.process(np.zeros((64, 64, 3), np.uint8))
    assert event["bundle_sha256"] == load_bundle(signed).bundle_hash


def test_cli_keygen_sign_verify(tmp_path, capsys):
    from sonogate.cli import main

    folder = write_tiny_bundle(tmp_path / "bundle")
    keydir = tmp_path / "keys"
    assert main(["bundle", "keygen", "--out-dir", str(keydir)]) == 0
    assert (keydir / PRIVATE_KEY_NAME).is_file() and (keydir / PUBLIC_KEY_NAME).is_file()
    assert main(["bundle", "sign", "--bundle", str(folder), "--key", str(keydir / PRIVATE_KEY_NAME)]) == 0
    capsys.readouterr()
    bundle_hash = load_bundle(folder).bundle_hash
    assert main(["bundle", "verify", "--bundle", str(folder), "--public-key", str(keydir / PUBLIC_KEY_NAME)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and bundle_hash in out and "signature valid" in out
    assert main(["bundle", "verify", "--bundle", str(folder)]) == 0
    assert "not checked" in capsys.readouterr().out
    (folder / "manifest.json").write_bytes((folder / "manifest.json").read_bytes() + b"\n")
    for argv in (["bundle", "verify", "--bundle", str(folder), "--public-key", str(keydir / PUBLIC_KEY_NAME)],
                 ["bundle", "verify", "--bundle", str(tmp_path / "missing")],
                 ["bundle", "keygen", "--out-dir", str(keydir)],
                 ["bundle", "sign", "--bundle", str(folder), "--key", str(tmp_path / "missing.pem")]):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err, argv


def test_the_safety_modules_never_import_torch():
    import subprocess
    import sys

    code = ("import sys; import sonogate.runtime.audit, sonogate.runtime.audit_cli, sonogate.core.signing; "
            "import sonogate.runtime.session; "
            "from sonogate.runtime.audit_cli import register; import argparse; "
            "register(argparse.ArgumentParser().add_subparsers()); "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); print(bad); "
            "sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
