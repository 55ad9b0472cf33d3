"""TensorFlow Datasets' real download path, as far as it goes offline.

tests/test_data.py loads the TFDS sets through `tfds.testing.mock_data`,
which replaces `download_and_prepare` and `as_dataset` and so never reaches
the code that a real download runs first. These tests build the real
builders and read their download metadata, and check that an offline
download fails in seconds with the fix named (issue 17).
"""

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow_datasets as tfds

from keras_gmix import data as kd
from keras_gmix.data import datasets, download

# name -> the (host, port) its download connects to, without a proxy.
TFDS_HOSTS = {
    "cifar10": [("www.cs.toronto.edu", 443)],
    "cifar100": [("www.cs.toronto.edu", 443)],
    "svhn_cropped": [("ufldl.stanford.edu", 80)],
    "stl10": [("ai.stanford.edu", 80)],
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _closed_port():
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------- the builders' download metadata --


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(TFDS_HOSTS))
def test_tfds_builder_resolves_its_download_urls(name, tmp_path):
    """The real builder's checksums file gives the URLs and hosts.

    `builder.url_infos` reads the checksums that the download manager
    verifies downloads against; it finds that file through
    `DatasetBuilder.code_path`, which imports `importlib_resources`
    (tensorflow_datasets/core/dataset_builder.py). tensorflow-datasets
    4.9.10 declares that package only for Python < 3.9, so on an install
    without it (keras_gmix's setup.py before it declared it) this test fails
    with ModuleNotFoundError, as `gmix-train --dataset cifar10` did.
    Nothing here opens a connection.
    """
    builder = tfds.builder(name, data_dir=str(tmp_path))
    assert not builder.is_prepared()  # a real download would be needed
    url_infos = builder.url_infos
    assert url_infos, f"{name}: no registered download URLs"
    for url, info in url_infos.items():
        assert url.startswith(("http://", "https://")), url
        assert re.fullmatch(r"[0-9a-f]{64}", info.checksum), url  # sha256
        assert int(info.size) > 10 * 2**20, url  # tens of MB and up
    urls = datasets._download_urls(builder)
    assert urls == sorted(url_infos)
    assert download.download_targets(urls, proxies={}) == TFDS_HOSTS[name]


@pytest.mark.timeout(120)
def test_missing_importlib_resources_is_named_with_the_fix(tmp_path):
    """Without importlib_resources the metadata read fails, naming the fix.

    Run in a fresh interpreter in which importing `importlib_resources`
    fails (a `None` entry in sys.modules), as on a fresh install of
    tensorflow-datasets alone. This is the failure that the test above
    would meet on such an install.
    """
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["importlib_resources"] = None  # import raises
        import tensorflow_datasets as tfds
        from keras_gmix.data import datasets
        builder = tfds.builder("cifar10", data_dir={str(tmp_path)!r})
        try:
            datasets._download_urls(builder)
        except ModuleNotFoundError as error:
            print("RAISED", error.name, "|", error)
        else:
            print("NO ERROR")
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "RAISED importlib_resources" in out, out + result.stderr[-2000:]
    assert "pip install importlib_resources" in out


# ------------------------------------------------ where a download goes --


def test_download_targets_default_ports_and_dedup():
    urls = [
        "https://a.example/x.tar.gz",
        "https://a.example/y.tar.gz",
        "http://b.example/z.mat",
        "http://c.example:8080/w",
        "ftp://d.example/v",
        "/local/file.tar.gz",  # no host: nothing to reach
    ]
    assert download.download_targets(urls, proxies={}) == [
        ("a.example", 443),
        ("b.example", 80),
        ("c.example", 8080),
        ("d.example", 21),
    ]


def test_download_targets_go_through_the_proxy_unless_exempt():
    proxies = {
        "https": "http://proxy.example:3128",
        "http": "proxy.example:8000",  # no scheme, as often written
        "no": "internal.example",
    }
    urls = [
        "https://a.example/x",
        "http://b.example/y",
        "https://internal.example/z",
    ]
    assert download.download_targets(urls, proxies=proxies) == [
        ("internal.example", 443),
        ("proxy.example", 3128),
        ("proxy.example", 8000),
    ]


# ------------------------------------------------ the reachability check --


@pytest.mark.timeout(30)
def test_reachable_host_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        download.check_download_reachable(
            "local", [f"http://127.0.0.1:{port}/data.tar.gz"], timeout=5.0
        )


@pytest.mark.timeout(30)
def test_refused_host_fails_naming_the_fix():
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(download.DownloadUnavailableError) as info:
        download.check_download_reachable(
            "local", [f"http://127.0.0.1:{port}/data.tar.gz"], timeout=5.0
        )
    # A refusal is an answer: no waiting for the timeout.
    assert time.monotonic() - start < 2.5
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "--data-dir" in message and ".npz" in message
    assert isinstance(info.value, ConnectionError)


@pytest.mark.timeout(30)
def test_silent_host_fails_within_the_timeout():
    """A host that never answers is given up after `timeout` seconds.

    192.0.2.1 is TEST-NET-1 (RFC 5737), never routed: the connection either
    hangs (where a route exists) or is refused at once; both must end within
    the timeout, and all hosts are tried at the same time.
    """
    urls = [f"http://192.0.2.{i}/x" for i in range(1, 4)]
    start = time.monotonic()
    with pytest.raises(download.DownloadUnavailableError, match="--data-dir"):
        download.check_download_reachable("silent", urls, timeout=1.0)
    assert time.monotonic() - start < 3.0


# --------------------------------------------- a real offline download --


def _reachable(host, port, timeout=3.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_offline_cifar10_download_fails_fast_naming_data_dir_and_npz(
    tmp_path,
):
    """`load_dataset("cifar10")` offline: a clear error within a minute.

    Before the check, TFDS retried www.cs.toronto.edu for about 200 s and
    raised a raw requests.ConnectionError (and on a fresh install it raised
    ModuleNotFoundError first). Skipped on a machine that can reach the
    host, where it would start a 160 MB download.
    """
    if _reachable("www.cs.toronto.edu", 443):
        pytest.skip("online: www.cs.toronto.edu is reachable")
    start = time.monotonic()
    with pytest.raises(kd.DownloadUnavailableError) as info:
        kd.load_dataset("cifar10", data_dir=str(tmp_path))
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "'cifar10'" in message and "www.cs.toronto.edu:443" in message
    assert "--data-dir" in message and ".npz" in message
    assert elapsed < download.DOWNLOAD_CHECK_TIMEOUT + 10.0, elapsed
    # Nothing half-downloaded is left behind.
    assert not (tmp_path / "downloads").exists()
