"""``sonogate audit verify`` and ``sonogate bundle sign | verify | keygen | upgrade`` (registered by sonogate/cli.py).

    sonogate audit verify FILE [--head SHA256]     OK: N lines, chain intact (exit 0) | TAMPERED: line K: ... (exit 1)
    sonogate bundle keygen --out-dir DIR           writes DIR/sonogate_signing_key.pem and .pub.pem
    sonogate bundle sign --bundle B --key PRIV.pem writes B/manifest.sig
    sonogate bundle verify --bundle B [--public-key PUB.pem]
    sonogate bundle upgrade --bundle B [--out DIR] [--key PRIV.pem]   manifest v1 -> v2, calibration re-bound

A missing or unreadable file is a ``SonogateError``: one line on stderr, exit code 2 (handled by cli.main).
Imports are light: no torch, no ONNX Runtime, no OpenCV.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_audit_verify(args) -> int:
    from sonogate.runtime.audit import verify_audit_log

    result = verify_audit_log(args.file, expected_head=args.head)
    if result.ok:
        print(f"OK: {result.lines} lines, {result.reason}")
        return 0
    print(f"TAMPERED: line {result.first_bad_line}: {result.reason}")
    return 1


def cmd_bundle_keygen(args) -> int:
    from sonogate.core.signing import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, generate_keypair

    out = Path(args.out_dir)
    private, public = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    fingerprint = generate_keypair(private, public)
    print(f"wrote {private} (private: keep it off the carts) and {public} (install on the carts); "
          f"key {fingerprint}")
    return 0


def cmd_bundle_sign(args) -> int:
    from sonogate.core.bundle import manifest_hash
    from sonogate.core.signing import sign_bundle

    path = sign_bundle(args.bundle, args.key)
    print(f"signed bundle {args.bundle} (sha256 {manifest_hash(args.bundle)}) -> {path}")
    return 0


def cmd_bundle_upgrade(args) -> int:
    """Rewrite a v1 bundle's manifest as v2 (in place, or in a copy with --out), re-bind its calibration.json to the
    new manifest hash when it was bound to the old one, and re-sign with --key (the old signature no longer
    matches and is removed otherwise)."""
    import shutil

    from sonogate.calibration.calfile import load_calibration
    from sonogate.core.bundle import CALIBRATION, upgrade_manifest
    from sonogate.core.signing import SIGNATURE, sign_bundle
    from sonogate.errors import BundleError

    folder = Path(args.bundle)
    if args.out:
        out = Path(args.out)
        if out.exists():
            raise BundleError(f"--out {out} exists: give a new folder")
        if not folder.is_dir():
            raise BundleError(f"bundle folder not found: {folder}")
        shutil.copytree(folder, out)
        folder = out
    calibration_path = folder / CALIBRATION
    old_hash, new_hash = upgrade_manifest(folder)
    notes = []
    if calibration_path.exists():
        calibration = load_calibration(calibration_path)
        if calibration.bundle_sha256 == old_hash:
            calibration.bundle_sha256 = new_hash
            calibration.save(calibration_path)
            notes.append("calibration.json re-bound")
        else:
            notes.append("calibration.json was bound to another bundle and is left stale")
    if (folder / SIGNATURE).exists():
        (folder / SIGNATURE).unlink()
        notes.append("old signature removed")
    if args.key:
        sign_bundle(folder, args.key)
        notes.append("re-signed")
    elif "old signature removed" in notes:
        notes.append("sign it again with 'sonogate bundle sign'")
    print(f"upgraded bundle {folder} to manifest v2 (sha256 {old_hash[:12]} -> {new_hash[:12]}); {'; '.join(notes)}")
    return 0


def cmd_bundle_verify(args) -> int:
    from sonogate.core.signing import SIGNATURE, key_fingerprint, load_public_key, load_verified_bundle

    bundle = load_verified_bundle(args.bundle, args.public_key)
    n_files = len(bundle.manifest.get("files", {}))
    if args.public_key:
        signature = f"signature valid (key {key_fingerprint(load_public_key(args.public_key))})"
    elif (bundle.path / SIGNATURE).exists():
        signature = "signature present but not checked (give --public-key)"
    else:
        signature = "unsigned"
    print(f"OK: bundle {bundle.path} sha256 {bundle.bundle_hash}: {n_files} files match the manifest, {signature}")
    return 0


def register(subparsers) -> None:
    audit = subparsers.add_parser("audit", help="check a tamper-evident audit log",
                                  description="Audit logs are hash-chained JSONL; see docs/safety.md.")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = audit_sub.add_parser("verify", help="check every line's hash and the chain",
                                  description="Prints 'OK: N lines, chain intact' (exit 0) or "
                                              "'TAMPERED: line K: reason' (exit 1); a missing file exits 2.")
    verify.add_argument("file", help="audit log (.jsonl)")
    verify.add_argument("--head", help="expected sha256 of the last line (detects lines cut off the end)")
    verify.set_defaults(func=cmd_audit_verify)
    audit.set_defaults(func=_needs_action(audit))

    bundle = subparsers.add_parser("bundle", help="sign and verify model bundles (Ed25519)",
                                   description="Integrity of a model bundle: sha256 of every file, and an "
                                               "optional Ed25519 signature over manifest.json.")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", metavar="ACTION")
    keygen = bundle_sub.add_parser("keygen", help="create a signing key pair")
    keygen.add_argument("--out-dir", required=True, help="folder for the two PEM files")
    keygen.set_defaults(func=cmd_bundle_keygen)
    sign = bundle_sub.add_parser("sign", help="verify a bundle, then sign its manifest (writes manifest.sig)")
    sign.add_argument("--bundle", required=True, help="model bundle folder")
    sign.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    sign.set_defaults(func=cmd_bundle_sign)
    check = bundle_sub.add_parser("verify", help="check every file's sha256 and, with a key, the signature")
    check.add_argument("--bundle", required=True, help="model bundle folder")
    check.add_argument("--public-key", help="Ed25519 public key (PEM); without it the signature is not checked")
    check.set_defaults(func=cmd_bundle_verify)
    upgrade = bundle_sub.add_parser("upgrade", help="rewrite a version-1 manifest as version 2 (self-describing)",
                                    description="Adds the task's spec to the manifest (docs/bundle.md); model files "
                                                "are untouched; calibration.json follows the new manifest hash.")
    upgrade.add_argument("--bundle", required=True, help="model bundle folder (manifest version 1)")
    upgrade.add_argument("--out", help="write the upgraded bundle to this new folder (default: in place)")
    upgrade.add_argument("--key", help="Ed25519 private key (PEM) to re-sign the upgraded manifest")
    upgrade.set_defaults(func=cmd_bundle_upgrade)
    bundle.set_defaults(func=_needs_action(bundle))


def _needs_action(parser: argparse.ArgumentParser):
    def func(_args) -> int:
        parser.print_help()
        return 2

    return func

