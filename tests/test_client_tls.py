"""Reward clients share one TLS context per process instead of reading the CA bundle per client."""

from __future__ import annotations

import asyncio
import shutil
import ssl

import pytest

pytest.importorskip("httpx")
pytest.importorskip("msgpack")

import certifi  # noqa: E402  (httpx's dependency)

from imagereward import client as client_module  # noqa: E402
from imagereward.client import AsyncRewardClient, RewardClient, tls_context  # noqa: E402
from imagereward.errors import OptionsError  # noqa: E402


@pytest.fixture
def contexts_made(monkeypatch):
    """The cafile/capath of every TLS context made while the test runs (ssl's own counter)."""
    made = []
    real = ssl.create_default_context

    def counting(*args, **kwargs):
        made.append((kwargs.get("cafile"), kwargs.get("capath")))
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    client_module._tls_context.cache_clear()
    yield made
    client_module._tls_context.cache_clear()


def test_many_clients_read_the_ca_bundle_once(contexts_made):
    clients = [RewardClient("http://127.0.0.1:9") for _ in range(4)]
    clients += [RewardClient("https://example.invalid") for _ in range(2)]

    async def open_async():
        opened = [AsyncRewardClient("http://127.0.0.1:9") for _ in range(3)]
        for item in opened:
            await item.aclose()

    asyncio.run(open_async())
    for item in clients:
        item.close()
    assert contexts_made == [(certifi.where(), None)]


def test_the_shared_context_verifies_certificates_and_host_names(contexts_made):
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.get_ca_certs()  # the bundle is loaded
    assert tls_context() is context


def test_ssl_cert_file_and_dir_choose_the_cas_as_httpx_does(contexts_made, monkeypatch, tmp_path):
    bundle = tmp_path / "cas.pem"
    shutil.copy(certifi.where(), bundle)
    default = tls_context()
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    by_dir = tls_context()
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the file wins over the folder
    by_file = tls_context()
    RewardClient("http://127.0.0.1:9").close()
    assert contexts_made == [(certifi.where(), None), (None, str(tmp_path)), (str(bundle), None)]
    assert len({id(default), id(by_dir), id(by_file)}) == 3
    missing = tmp_path / "missing.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(missing))
    with pytest.raises(OptionsError, match=f"SSL_CERT_FILE={missing}: cannot read CA certificates"):
        RewardClient("http://127.0.0.1:9")

