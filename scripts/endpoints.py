"""Addresses, certificates and keys of a federation spread over machines, checked before anything starts.

Shared by ``poisonlab-node`` (:mod:`scripts.node`), ``engine=remote``
(:class:`scripts.engines.RemoteFederation`) and ``engine.ray_address``
(:class:`scripts.engines.Simulation`). Every check raises
:class:`EndpointError` (a ``ValueError``) with a sentence that names the
address or file and says how to fix it; nothing here starts a process.

:func:`check_superlink` is what ``engine=remote`` does before any expensive
work: a TCP connection to the SuperLink, then a TLS handshake that verifies
its certificate with the federation's CA for the address used (or, for a
SuperLink said to run ``--insecure``, that it does not in fact serve TLS).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

WILDCARDS = ("0.0.0.0", "::", "[::]")


class EndpointError(ValueError):
    """An address, port, certificate or key that cannot work, with what to do about it."""


def check_port(port: int, what: str) -> int:
    """``port`` when it is a TCP port number (1-65535), else an :class:`EndpointError` naming ``what``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise EndpointError(f"{what}={port!r} is not a TCP port: use a whole number in 1..65535")
    return port


def check_host(host: str, what: str) -> str:
    """``host`` (a name, an IPv4 or an IPv6 address, brackets allowed) or an :class:`EndpointError`."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare or any(c.isspace() for c in bare) or "/" in bare:
        raise EndpointError(f"{what}={host!r} is not a host name or IP address (no scheme, path or spaces)")
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise EndpointError(
                f"{what}={host!r} is not a host name or IP address; give the port separately (HOST:PORT only "
                "where the option asks for it)"
            ) from None
    return bare


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``, the host without brackets.

    Raises
    ------
    EndpointError
        When ``text`` is not of that form, naming ``what`` (the option it came from).
    """
    text = str(text).strip()
    if "://" in text:
        raise EndpointError(f"{what}={text!r}: give HOST:PORT without a scheme (e.g. 10.0.0.5:19091)")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise EndpointError(f"{what}={text!r} is not HOST:PORT (e.g. 10.0.0.5:19091 or [fd00::5]:19091)")
    if ":" in host and not host.startswith("["):
        raise EndpointError(f"{what}={text!r}: write an IPv6 address in brackets, e.g. [{host}]:{port}")
    return check_host(host, what), check_port(int(port), what)


def url_host(host: str) -> str:
    """``host`` as it goes before ``:port`` in an address (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def load_certificate(path: Path, what: str) -> x509.Certificate:
    """The PEM certificate at ``path``, or an :class:`EndpointError` saying what is wrong with the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EndpointError(f"{what} {path}: no such file (the federation's CA certificate is ca.crt of its certs)")
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as err:
        raise EndpointError(f"{what} {path} is not a PEM certificate ({err})") from None


def check_private_key(path: Path, what: str) -> Path:
    """``path`` when it holds a SuperNode's private key in OpenSSH format (what Flower 1.41 loads)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EndpointError(f"{what} {path}: no such file (SuperNode i's supernode-<i>.key from poisonlab-node certs)")
    data = path.read_bytes()
    if data.startswith(b"ecdsa-sha2-") or path.suffix == ".pub":
        raise EndpointError(f"{what} {path} is a public key: give the private key (supernode-<i>.key, not .pub)")
    try:
        serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise EndpointError(f"{what} {path} is not an unencrypted OpenSSH private key ({err})") from None
    return path


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (its subject alternative names)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def check_certificate_names(cert_path: Path, host: str) -> None:
    """Raise unless the certificate at ``cert_path`` is valid for ``host`` (name or IP)."""
    names = certificate_names(load_certificate(cert_path, "certificate"))
    try:
        wanted = str(ipaddress.ip_address(host))
    except ValueError:
        wanted = host.lower()
    if wanted not in [n.lower() for n in names]:
        raise EndpointError(
            f"{cert_path} is valid for {names}, not for {host}: make the certificates again with "
            f"poisonlab-node certs --host {host} (every name or address the SuperLink is reached at)"
        )


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine (it can be bound here)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((addr[0], 0))
            except OSError:
                continue
            return True
    return False


def check_reachable(host: str, port: int, *, service: str, fix: str, timeout: float = 5.0) -> None:
    """Raise unless something accepts a TCP connection at ``host:port`` within ``timeout`` seconds.

    Parameters
    ----------
    host, port : str, int
        The address to connect to (the host without brackets).
    service : str
        What should listen there, for the message (e.g. "the Ray cluster's head").
    fix : str
        What to do about it, the end of the message.
    timeout : float
        Seconds for the connection.

    Raises
    ------
    EndpointError
        When the connection is refused, times out or the host does not resolve, with the reason.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise EndpointError(f"cannot reach {service} at {url_host(host)}:{port} ({reason}): {fix}") from None


def check_superlink(host: str, port: int, *, ca: Path | None, timeout: float = 10.0) -> None:
    """Raise unless a SuperLink answers at ``host:port`` the way it is to be reached.

    Parameters
    ----------
    host, port : str, int
        The SuperLink's address as the SuperNodes and the ``flwr`` CLI reach it.
    ca : Path, optional
        The federation's CA: the SuperLink must present a certificate it signed,
        valid for ``host``. ``None``: the SuperLink must be plain (``--insecure``).
    timeout : float
        Seconds for the connection and the handshake.

    Raises
    ------
    EndpointError
        When nothing listens there, the certificate does not verify, or the
        SuperLink speaks TLS when told it does not (or the reverse).
    """
    address = f"{url_host(host)}:{port}"
    start = "start it there with `poisonlab-node superlink --host <address> --port <port> ...`"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise EndpointError(
            f"cannot reach the SuperLink at {address} ({err.strerror or err}): {start}, check that this machine "
            "can reach it (firewall), or fix engine.superlink"
        ) from None
    with sock:
        if ca is None:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            try:
                with context.wrap_socket(sock, server_hostname=host):
                    pass
            except (ssl.SSLError, OSError):
                return  # no TLS: as told
            raise EndpointError(
                f"the SuperLink at {address} serves TLS but engine.insecure=true: give engine.ca=<the federation's "
                "ca.crt> and engine.insecure=false"
            )
        context = ssl.create_default_context(cafile=str(ca))
        try:
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as err:
            raise EndpointError(
                f"the SuperLink at {address} presents a certificate that {ca} does not verify for {host} "
                f"({err.verify_message}): use the ca.crt of that federation's certs, and make its certificate "
                f"valid for {host} (poisonlab-node certs --host {host})"
            ) from None
        except (ssl.SSLError, OSError) as err:
            raise EndpointError(
                f"no TLS handshake with the SuperLink at {address} ({err}): if it runs with --insecure, set "
                "engine.insecure=true and engine.ca=null"
            ) from None
