"""TLS: certificate checks, one SSLContext per virtual host, SNI, handshakes.

- ``check_config`` (start, ``-t``, reload) loads every certificate/key pair
  with ``cryptography`` and ``ssl`` and reports problems by vhost and file:
  missing or unreadable files, a key that does not match, an expired
  certificate (warning 30 days before), a vhost name not among the
  certificate's names (warning).
- ``SNISelector`` holds the contexts of one ``bind-ssl`` address and picks
  one in the servername callback: server name, then ``name:port`` when the
  port is not 443 (as the original did), aliases too; no SNI or an unknown
  name gets the first vhost's certificate.
- ``HandshakePool`` runs handshakes in a bounded set of threads (a slow or
  hostile client must never stall the loop) with a 10 s limit each; the
  finished socket goes back to the loop through ``call_soon_threadsafe``.
"""

import datetime
import logging
import queue
import socket
import ssl
import threading
import time

log = logging.getLogger("blastbeat.tls")

HANDSHAKE_TIMEOUT = 10.0
EXPIRY_WARNING_DAYS = 30


def _config_error(config, vhost, option, message):
    from .config import ConfigError
    return ConfigError(config.path, config.lines.get(("blastbeat:" + vhost.name, option),
                                                     vhost.line),
                       option, "virtual host %s: %s" % (vhost.name, message),
                       section="blastbeat:" + vhost.name)


def needs_tls(config, vhost):
    return bool(vhost.ssl_binds or (config.ssl_binds and not vhost.binds))


def check_config(config):
    """Raise ConfigError for the first unusable pair; append warnings."""
    for vhost in config.vhosts:
        if not needs_tls(config, vhost):
            continue
        if not vhost.certificate:
            raise _config_error(config, vhost, "certificate",
                                "served over TLS but has no certificate; expected "
                                "certificate = FILE (here or in [blastbeat])")
        errors, warnings = check_pair(vhost.certificate, vhost.key or vhost.certificate,
                                      vhost.names)
        if errors:
            option, message = errors[0]
            raise _config_error(config, vhost, option, message)
        config.warnings.extend("%s: virtual host %s: %s" % (config.path, vhost.name, w)
                               for w in warnings)


def _not_after(cert):
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:   # cryptography < 42 (Debian 12 ships 38)
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


def _cert_names(cert):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    names = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names.extend(n.lower() for n in san.value.get_values_for_type(x509.DNSName))
        names.extend(str(ip) for ip in san.value.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    if not names:
        names.extend(a.value.lower() for a in
                     cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return names


def _name_matches(host, pattern):
    if pattern == host:
        return True
    if pattern.startswith("*.") and "." in host:
        return host.split(".", 1)[1] == pattern[2:]
    return False


def check_pair(cert_path, key_path, vhost_names=()):
    """Return (errors, warnings); errors are (option, message) pairs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from .config import split_host_port

    errors, warnings = [], []
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
    except OSError as e:
        return [("certificate", "cannot read certificate %s: %s" % (cert_path, e.strerror))], []
    try:
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        return [("key", "cannot read key %s: %s" % (key_path, e.strerror))], []
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        return [("certificate", "%s is not a PEM certificate (%s)" % (cert_path, e))], []
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        return [("key", "%s is not an unencrypted PEM private key (%s)" % (key_path, e))], []
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, fmt) != cert.public_key().public_bytes(enc, fmt):
        return [("key", "key %s does not match certificate %s" % (key_path, cert_path))], []
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = _not_after(cert)
    if not_after < now:
        return [("certificate", "certificate %s expired on %s"
                 % (cert_path, not_after.strftime("%Y-%m-%d %H:%M UTC")))], []
    if not_after - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        warnings.append("certificate %s expires on %s"
                        % (cert_path, not_after.strftime("%Y-%m-%d %H:%M UTC")))
    names = _cert_names(cert)
    for vname in vhost_names:
        host, _ = split_host_port(vname)
        host = host.strip("[]")
        if not any(_name_matches(host, n) for n in names):
            warnings.append("%s is not among the names of certificate %s (%s)"
                            % (host, cert_path, ", ".join(names) or "none"))
    try:
        make_context(cert_path, key_path)
    except (ssl.SSLError, OSError) as e:
        errors.append(("certificate", "OpenSSL refuses %s / %s: %s" % (cert_path, key_path, e)))
    return errors, warnings


def make_context(cert_path, key_path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class SNISelector:
    """The contexts of one bind-ssl address, chosen by SNI."""

    def __init__(self, port):
        self.port = port
        self.by_name = {}
        self.default = None
        self._cache = {}

    def add(self, vhost):
        key = (vhost.certificate, vhost.key)
        ctx = self._cache.get(key)
        if ctx is None:
            ctx = self._cache[key] = make_context(vhost.certificate, vhost.key)
        if self.default is None:
            self.default = ctx
        for name in vhost.names:
            self.by_name.setdefault(name, ctx)
        return ctx

    def finish(self):
        for ctx in self._cache.values():
            ctx.sni_callback = self._on_sni

    def _on_sni(self, sslobj, server_name, initial_ctx):
        if server_name is None:
            return None
        name = server_name.lower()
        ctx = self.by_name.get(name)
        if ctx is None and self.port != 443:
            ctx = self.by_name.get("%s:%d" % (name, self.port))
        if ctx is not None and ctx is not sslobj.context:
            sslobj.context = ctx
        return None


class HandshakePool:
    """Bounded threads that complete TLS handshakes off the loop.

    ``submit`` must only be called when ``has_room()``; the server stops
    accepting on TLS listeners while the pool is full, so new clients wait
    in the kernel's accept backlog instead of piling up threads.
    """

    def __init__(self, loop, size=32):
        self.loop = loop
        self.size = size
        self.busy = 0
        self._queue = queue.SimpleQueue()
        self._threads = []
        self._room_callbacks = []

    def has_room(self):
        return self.busy < self.size

    def on_room(self, callback):
        self._room_callbacks.append(callback)

    def submit(self, sock, context, on_done):
        """Handshake ``sock`` with ``context``; loop runs on_done(sslsock|None, err)."""
        self.busy += 1
        if len(self._threads) < min(self.busy, self.size):
            t = threading.Thread(target=self._worker, name="bb-tls-%d" % len(self._threads),
                                 daemon=True)
            self._threads.append(t)
            t.start()
        self._queue.put((sock, context, on_done))

    def _worker(self):
        while True:
            job = self._queue.get()
            if job is None:
                return
            sock, context, on_done = job
            result, error = None, None
            deadline = time.monotonic() + HANDSHAKE_TIMEOUT
            try:
                sock.settimeout(HANDSHAKE_TIMEOUT)
                sslsock = context.wrap_socket(sock, server_side=True,
                                              do_handshake_on_connect=False)
                sock = sslsock
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise socket.timeout("handshake took longer than %ds"
                                             % HANDSHAKE_TIMEOUT)
                    sslsock.settimeout(left)
                    sslsock.do_handshake()
                    break
                sslsock.setblocking(False)
                result = sslsock
            except (OSError, ssl.SSLError, ValueError) as e:
                error = e
                try:
                    sock.close()
                except OSError:
                    pass
            self.loop.call_soon_threadsafe(self._done, on_done, result, error)

    def _done(self, on_done, result, error):
        self.busy -= 1
        try:
            on_done(result, error)
        finally:
            for callback in list(self._room_callbacks):
                callback()

    def shutdown(self):
        for _ in self._threads:
            self._queue.put(None)
