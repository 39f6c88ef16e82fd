"""DICOM TLS with dcmtk's storescu: server authentication, and client certificates when they are required."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.component.conftest import StartGateway
from tests.conftest import dcmtk
from tests.helpers import free_port, run

CT = str(get_testdata_file("CT_small.dcm"))


def openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate from the CA and one self-signed."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test District CA",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(extension + "\n" if extension else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
            "-keyout", str(d / "stranger.key"), "-out", str(d / "stranger.pem"))
    return d


def tls_settings(pki: Path, require_client_cert: bool) -> dict[str, object]:
    return {"tls": {"port": free_port(), "cert_file": pki / "server.pem", "key_file": pki / "server.key",
                    "ca_file": pki / "ca.pem", "require_client_cert": require_client_cert}}


async def storescu_tls(port: int, pki: Path, identity: str) -> tuple[int, str]:
    return await run(dcmtk("storescu"), "+tls", str(pki / f"{identity}.key"), str(pki / f"{identity}.pem"),
                     "+cf", str(pki / "ca.pem"), "-aec", "DICOMGW", "127.0.0.1", str(port), CT)


async def test_store_over_tls(start_gateway: StartGateway, pki: Path) -> None:
    async with start_gateway(**tls_settings(pki, require_client_cert=False)) as gateway:
        assert gateway.tls_port is not None
        code, out = await storescu_tls(gateway.tls_port, pki, "client")
        assert code == 0, out
        assert len((await gateway.instances()).complete) == 1


async def test_the_plain_port_is_closed_when_tls_is_configured_unless_kept(
    start_gateway: StartGateway, pki: Path
) -> None:
    """Otherwise a required client certificate would protect nothing: a peer would use the plain port."""
    plain = free_port()
    async with start_gateway(port=plain, **tls_settings(pki, require_client_cert=True)) as gateway:
        assert gateway.settings.plain_port_open is False
        code, out = await run(dcmtk("echoscu"), "-aec", "DICOMGW", "127.0.0.1", str(plain))
        assert code != 0, out
        assert gateway.tls_port is not None
        assert (await storescu_tls(gateway.tls_port, pki, "client"))[0] == 0
    async with start_gateway(port=plain, tls_only=False, **tls_settings(pki, require_client_cert=True)) as gateway:
        code, out = await run(dcmtk("echoscu"), "-aec", "DICOMGW", "127.0.0.1", str(plain))
        assert code == 0, out


async def test_untrusted_client_certificate_is_refused_when_required(start_gateway: StartGateway, pki: Path) -> None:
    async with start_gateway(**tls_settings(pki, require_client_cert=True)) as gateway:
        assert gateway.tls_port is not None
        code, out = await storescu_tls(gateway.tls_port, pki, "stranger")
        assert code != 0
        code, out = await storescu_tls(gateway.tls_port, pki, "client")
        assert code == 0, out
        assert len((await gateway.instances()).complete) == 1
