"""Failing fast, with the fix named, when a data set cannot be downloaded.

TensorFlow Datasets retries an unreachable download host for minutes
(10 urllib3 retries with exponential backoff: about 200 s per file on an
offline machine) and then raises a raw `requests.ConnectionError`.
`check_download_reachable` opens one TCP connection to each host (or proxy)
that the download would use, with a timeout of a few seconds, and raises a
`DownloadUnavailableError` that says what to do instead. It does not change
how TFDS downloads.
"""

import socket
import threading
import urllib.parse
import urllib.request

# Seconds to wait for one TCP connection (name lookup included). A reachable
# host answers in well under a second; a few seconds leave room for a slow
# link without making an offline failure slow.
DOWNLOAD_CHECK_TIMEOUT = 5.0

_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}


class DownloadUnavailableError(ConnectionError):
    """A data set is not on disk and its download host cannot be reached."""


def download_targets(urls, proxies=None):
    """The (host, port) pairs that downloading `urls` connects to first.

    A URL whose scheme has a proxy (the `https_proxy`/`http_proxy`
    environment variables, as `requests` reads them) connects to the proxy,
    unless `no_proxy` exempts its host.

    Args:
        urls: iterable of str, the URLs to download.
        proxies: dict or None, scheme -> proxy URL, as returned by
            `urllib.request.getproxies()`. Defaults to None (read the
            environment).

    Returns:
        A sorted list of unique (host, port) pairs.
    """
    if proxies is None:
        proxies = urllib.request.getproxies()
    targets = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            continue  # a local path: nothing to connect to
        proxy = proxies.get(parts.scheme)
        bypass = urllib.request.proxy_bypass_environment
        if proxy and not bypass(parts.hostname, proxies):
            # "proxy:3128" without a scheme is how many users write it.
            if "://" not in proxy:
                proxy = "http://" + proxy
            parts = urllib.parse.urlsplit(proxy)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)
        targets.add((parts.hostname, port))
    return sorted(targets)


def _connects(host, port, timeout):
    """Whether a TCP connection to host:port opens within `timeout` seconds."""
    outcome = []
    done = threading.Event()

    def connect():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:  # refused, unknown host, unreachable, timed out
            outcome.append(False)
        finally:
            done.set()

    # The name lookup inside create_connection ignores `timeout` (a dead DNS
    # server blocks it for 10-30 s), so the caller waits on the event, not on
    # the call; a daemon thread left behind never keeps Python alive.
    threading.Thread(target=connect, daemon=True).start()
    return done.wait(timeout) and outcome[0]


def check_download_reachable(name, urls, timeout=DOWNLOAD_CHECK_TIMEOUT):
    """Raises `DownloadUnavailableError` if a download host cannot be reached.

    Every host is tried at the same time, so the check takes at most
    `timeout` seconds in all.

    Args:
        name: str, the data set's name, for the message.
        urls: iterable of str, the URLs the download will fetch.
        timeout: float, seconds to wait for each connection. Defaults to
            `DOWNLOAD_CHECK_TIMEOUT` (5 s).

    Raises:
        DownloadUnavailableError: naming the unreachable hosts, `data_dir`
            (`--data-dir`) and `.npz` files.
    """
    targets = download_targets(urls)
    results = {}

    def check(target):
        results[target] = _connects(*target, timeout)

    threads = [threading.Thread(target=check, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 1.0)
    unreachable = [t for t in targets if not results.get(t, False)]
    if unreachable:
        hosts = ", ".join(f"{host}:{port}" for host, port in unreachable)
        raise DownloadUnavailableError(
            f"The data set {name!r} is not prepared on this machine and its "
            f"download host ({hosts}) cannot be reached within {timeout:g} s: "
            "the machine is offline, or a firewall or proxy blocks it. "
            "Either prepare it once on a machine with internet access and "
            "point `data_dir` (`--data-dir` in gmix-train) at the TensorFlow "
            "Datasets folder that holds it, or save the arrays x_train, "
            "y_train, x_test, y_test in a `.npz` file and pass its path as "
            "the data set (`--dataset path/to/file.npz`)."
        )
