"""`zt ca init|issue|show`: the embedded CA's state directory from the command line."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from cli._common import reports_errors
from zt.identity._files import FileWriteError
from zt.identity.ca import (
    DEFAULT_DIR,
    DEFAULT_LEAF_LIFETIME,
    DEFAULT_TRUST_DOMAIN,
    CertificateAuthority,
)
from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateFileError
from zt.identity.spiffe import SpiffeId

app = typer.Typer(help="The embedded certificate authority.", no_args_is_help=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="CA state directory")]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateFileError(f"{what} {path}: {exc.strerror}") from None


@app.command()
@reports_errors
def init(
    *,
    directory: DirOpt = DEFAULT_DIR,
    trust_domain: Annotated[str, typer.Option(help="SPIFFE trust domain")] = DEFAULT_TRUST_DOMAIN,
    force: Annotated[bool, typer.Option(help="replace an existing CA")] = False,
    cert: Annotated[Path | None, typer.Option(help="operator CA certificate (PEM)")] = None,
    key: Annotated[Path | None, typer.Option(help="operator CA private key (PEM)")] = None,
    bundle: Annotated[Path | None, typer.Option(help="trust bundle peers verify against")] = None,
) -> None:
    """Create a P-256 CA in DIR, or (with --cert/--key) store an operator's CA there."""
    cert_pem, key_pem = _read(cert, "--cert"), _read(key, "--key")
    if (cert_pem is None) != (key_pem is None):
        raise CertificateFileError("--cert and --key: expected both or neither")
    if cert_pem is not None and key_pem is not None:
        ca = CertificateAuthority.import_pem(
            directory,
            cert_pem,
            key_pem,
            trust_domain=trust_domain,
            bundle_pem=_read(bundle, "--bundle"),
            force=force,
        )
    else:
        ca = CertificateAuthority.init(directory, trust_domain, force=force)
    typer.echo(f"CA in {directory}: trust domain {ca.trust_domain}, sha256 {ca.fingerprint}")


@app.command()
@reports_errors
def issue(
    spiffe: Annotated[str, typer.Option(help="spiffe://<td>/ns/<ns>/sa/<sa>")],
    out: Annotated[Path, typer.Option(help="writes OUT.pem, OUT.key, OUT-bundle.pem")],
    directory: DirOpt = DEFAULT_DIR,
    lifetime: Annotated[float, typer.Option(help="seconds")] = DEFAULT_LEAF_LIFETIME,
) -> None:
    """Issue a workload certificate from the CA in DIR."""
    identity = SpiffeId.parse(spiffe)
    cert = CertificateAuthority.load(directory).issue(identity, now=time.time(), lifetime=lifetime)
    for path in _write_set(cert, out):
        typer.echo(str(path))


def _write_set(cert: WorkloadCert, out: Path) -> tuple[Path, Path, Path]:
    """Each file is written atomically; if one fails, the files of the set this run created are
    removed too, so a failed issue never leaves a key without its certificate."""
    paths = [out.with_name(out.name + suffix) for suffix in (".pem", ".key", "-bundle.pem")]
    existed = {p for p in paths if p.exists()}
    try:
        return cert.write(out)
    except FileWriteError:
        for path in paths:
            if path not in existed:
                path.unlink(missing_ok=True)
        raise


@app.command()
@reports_errors
def show(
    directory: DirOpt = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Subject, fingerprint, validity and the identities this CA issued."""
    ca = CertificateAuthority.load(directory)
    latest: dict[str, float] = {}
    for rec in ca.issued():
        latest[rec.identity] = max(latest.get(rec.identity, 0.0), rec.not_after)
    doc = {
        "directory": str(directory),
        "trust_domain": ca.trust_domain,
        "subject": ca.cert.subject.rfc4514_string(),
        "sha256_fingerprint": ca.fingerprint,
        "not_before": _iso(ca.cert.not_valid_before_utc.timestamp()),
        "not_after": _iso(ca.cert.not_valid_after_utc.timestamp()),
        "issued": [{"identity": i, "latest_not_after": _iso(t)} for i, t in sorted(latest.items())],
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for field in ("directory", "trust_domain", "subject", "sha256_fingerprint"):
        typer.echo(f"{field}: {doc[field]}")
    typer.echo(f"validity: {doc['not_before']} .. {doc['not_after']}")
    typer.echo(f"issued identities: {len(latest)}")
    for identity, t in sorted(latest.items()):
        typer.echo(f"  {identity} (latest valid until {_iso(t)})")
