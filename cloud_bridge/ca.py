"""X.509 for the cloud link (cryptography): the operator's gateway CA, certificate requests,
and the checks both ends need. Keys are ECDSA P-256 (what every TLS stack on the boxes speaks).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_bridge.protocol import BridgeError

__all__ = ["CertInfo", "CertificateAuthority", "cert_info", "make_csr", "write_private"]

CA_DAYS = 3650
SERVER_DAYS = 825
GATEWAY_DAYS = 730


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True, slots=True)
class CertInfo:
    common_name: str
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    fingerprint: str
    issuer: str


def cert_info(pem: bytes) -> CertInfo:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise BridgeError(f"not a PEM certificate: {exc}") from exc
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertInfo(
        common_name=str(cn[0].value) if cn else "",
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        issuer=str(issuer[0].value) if issuer else "",
    )


def make_csr(common_name: str) -> tuple[bytes, bytes]:
    """A new P-256 key and a CSR for it: (key PEM, CSR PEM). The key never leaves the box."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


class CertificateAuthority:
    """The operator's gateway CA, kept in a directory (`ca.key` 0600, `ca.pem`)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(
        cls, directory: Path, *, name: str = "Beifang Cloud Gateway CA", days: int = CA_DAYS
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "China Broadnet Liaoning"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(key, cert)
        write_private(directory / "ca.key", _key_pem(key))
        (directory / "ca.pem").write_bytes(ca.pem)
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise BridgeError("the CA key is not an EC key")
        return cls(key, x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()))

    @classmethod
    def open(cls, directory: Path) -> CertificateAuthority:
        return cls.load(directory) if (directory / "ca.key").exists() else cls.create(directory)

    def _builder(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        days: int,
        not_before: dt.datetime | None,
    ) -> x509.CertificateBuilder:
        start = not_before or (_now() - dt.timedelta(minutes=5))
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )

    def issue_server(self, hosts: list[str], *, days: int = SERVER_DAYS) -> tuple[bytes, bytes]:
        """A TLS server certificate for the cloud broker/API: (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]), key.public_key(), days, None
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_client(
        self, common_name: str, *, days: int = GATEWAY_DAYS, not_before: dt.datetime | None = None
    ) -> tuple[bytes, bytes]:
        """A client certificate with a new key (for the cloud's own MQTT client and tests)."""
        key_pem, csr_pem = make_csr(common_name)
        return self.sign_csr(csr_pem, common_name=common_name, days=days, not_before=not_before), key_pem

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        common_name: str,
        days: int = GATEWAY_DAYS,
        not_before: dt.datetime | None = None,
    ) -> bytes:
        """Issue a gateway's client certificate; BridgeError if the CSR is not for `common_name`."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise BridgeError(f"not a PEM certificate request: {exc}") from exc
        if not csr.is_signature_valid:
            raise BridgeError("the certificate request's signature does not verify")
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cn or cn[0].value != common_name:
            raise BridgeError(f"the certificate request must name {common_name!r}")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise BridgeError("the certificate request must carry an EC key")
        cert = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                public_key,
                days,
                not_before,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)
