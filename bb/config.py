"""Reading and checking blastbeat.ini (spec §2).

The original's ini format is kept as it is: ``;`` and ``#`` comments, keys
that repeat (``bind``, ``node``, ``alias``, ``zmq``), unquoted values and
``[blastbeat:host:port]`` sections.  configobj refuses repeated keys and
does not know ``;`` comments, so each line is first rewritten in place
(``key`` becomes ``key@LINE``, comments are cut) and configobj parses the
result: line numbers survive, every occurrence of a key survives, in order.

Every error names the file, the line and the option and says what was
expected; ``load`` raises the first one as ConfigError.  Warnings (unknown
options and sections) are collected in ``Config.warnings``.
"""

import ipaddress
import os
import re
import socket

import configobj

GLOBAL_SECTION = "blastbeat"
VHOST_PREFIX = "blastbeat:"

EX_CONFIG = 78
EX_EMPEROR_NO_RESPAWN = 26


class ConfigError(Exception):
    def __init__(self, path, line, option, message, section=None):
        self.path = path
        self.line = line
        self.option = option
        self.section = section
        self.message = message
        where = path if line is None else "%s:%s" % (path, line)
        what = ""
        if section:
            what += "[%s] " % section
        if option:
            what += "%s: " % option
        super().__init__("%s: %s%s" % (where, what, message))


class Address:
    """A listen address: ``host`` (numeric when possible), ``port``, ``scope``."""

    __slots__ = ("host", "port", "scope", "text", "line")

    def __init__(self, host, port, scope, text, line):
        self.host = host
        self.port = port
        self.scope = scope
        self.text = text
        self.line = line

    @property
    def key(self):
        return (self.host, self.port, self.scope)

    def sockaddr_info(self):
        """(family, sockaddr) to bind to; resolves a host name if needed."""
        host = self.host
        if self.scope:
            host = "%s%%%s" % (host, self.scope)
        infos = socket.getaddrinfo(host or None, self.port, socket.AF_UNSPEC,
                                   socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr

    def __str__(self):
        if ":" in self.host:
            scope = "%" + self.scope if self.scope else ""
            return "[%s%s]:%d" % (self.host, scope, self.port)
        return "%s:%d" % (self.host, self.port)

    def __repr__(self):
        return "Address(%s)" % self


class VHost:
    """A ``[blastbeat:NAME]`` section."""

    def __init__(self, name, line):
        self.name = name            # lower-case "host" or "host:port"
        self.line = line
        self.nodes = []             # node names, in order, unique
        self.aliases = []
        self.binds = []             # Address list; empty: every global bind
        self.ssl_binds = []
        self.certificate = None
        self.key = None
        self.sessions = None
        self.timeout = None
        self.zmq = None
        self.cache = 0
        self.bandwidth = 0
        host, port = split_host_port(name)
        self.server_name = host
        self.server_port = port     # None when the name has none

    @property
    def names(self):
        return [self.name] + self.aliases

    @property
    def own_binds(self):
        return bool(self.binds or self.ssl_binds)

    def __repr__(self):
        return "VHost(%s)" % self.name


class Config:
    def __init__(self, path):
        self.path = path
        self.binds = []
        self.ssl_binds = []
        self.zmq = []
        self.ping_freq = 3.0
        self.stats_freq = 60.0
        self.uid = "nobody"
        self.gid = "nogroup"
        self.max_hops = 10
        self.sessions = 10000
        self.max_headers = 64
        self.writequeue_buffer = 8388608
        self.memory = 2048
        self.timeout = 1800.0
        self.certificate = None
        self.key = None
        self.websocket_max_message = 16 * 1024 * 1024
        self.access_log = None
        self.heartbeat = 0.0
        self.header_timeout = 30.0
        self.zmq_hwm = 10000
        self.vhosts = []
        self.warnings = []
        self.lines = {}             # (section, option) -> first line


def split_host_port(name):
    """``host:port`` -> (host, port); ``host`` -> (host, None)."""
    if name.startswith("["):
        end = name.find("]")
        rest = name[end + 1:]
        if rest.startswith(":") and rest[1:].isdigit():
            return name[:end + 1], int(rest[1:])
        return name, None
    host, sep, port = name.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return name, None


_HOSTNAME = re.compile(r"[a-z0-9_.*-]*\.?|\[[0-9a-f:.]+\]")


def parse_address(text):
    """Parse ``ADDR:PORT`` (IPv4, ``[v6]:port``, ``v6:port``, ``%scope``).

    Returns (host, port, scope).  Raises ValueError with what was expected.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError("expected [IPV6]:PORT, got %r" % text)
        host, port = text[1:end], text[end + 2:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("expected ADDR:PORT, got %r" % text)
    scope = None
    if "%" in host:
        host, scope = host.split("%", 1)
        if not scope:
            raise ValueError("empty interface scope in %r" % text)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected a port number 0-65535 in %r" % text)
    if host in ("", "*"):
        host = "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError("expected an IP address or host name in %r" % text) from None
    if scope and ":" not in host:
        raise ValueError("an interface scope needs an IPv6 address in %r" % text)
    return host, int(port), scope


def _bind(text, line):
    parts = text.split()
    if not parts:
        raise ValueError("expected ADDR:PORT [PRIORITY]")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("expected ADDR:PORT [PRIORITY], got %r" % text)
    host, port, scope = parse_address(parts[0])
    return Address(host, port, scope, text, line)


def _zmq(text, line):
    if not re.fullmatch(r"(tcp|ipc|inproc)://\S+", text):
        raise ValueError("expected a ZeroMQ endpoint like tcp://0.0.0.0:5000, got %r" % text)
    return text


def _number(kind, minimum=None, maximum=None):
    def parse(text, line):
        try:
            value = kind(text)
        except ValueError:
            raise ValueError("expected %s, got %r" % (
                "a whole number" if kind is int else "a number", text)) from None
        if minimum is not None and value < minimum:
            raise ValueError("must be at least %s, got %s" % (minimum, text))
        if maximum is not None and value > maximum:
            raise ValueError("must be at most %s, got %s" % (maximum, text))
        return value
    return parse


def _text(text, line):
    if not text:
        raise ValueError("expected a value")
    return text


def _name(text, line):
    if not text or any(c.isspace() for c in text):
        raise ValueError("expected a name without spaces, got %r" % text)
    return text


def _hostname(text, line):
    name = text.lower()
    host, _ = split_host_port(name)
    if not name or not _HOSTNAME.fullmatch(host):
        raise ValueError("expected a host name or host:port, got %r" % text)
    return name


# option -> (attribute, parser, repeatable)
GLOBAL_OPTIONS = {
    "bind": ("binds", _bind, True),
    "bind-ssl": ("ssl_binds", _bind, True),
    "zmq": ("zmq", _zmq, True),
    "ping-freq": ("ping_freq", _number(float, 0.05), False),
    "stats-freq": ("stats_freq", _number(float, 0), False),
    "uid": ("uid", _name, False),
    "gid": ("gid", _name, False),
    "max-hops": ("max_hops", _number(int, 0, 1000), False),
    "sessions": ("sessions", _number(int, 1), False),
    "max-headers": ("max_headers", _number(int, 1, 1000), False),
    "writequeue-buffer": ("writequeue_buffer", _number(int, 4096), False),
    "memory": ("memory", _number(int, 1), False),
    "timeout": ("timeout", _number(float, 0.1), False),
    "certificate": ("certificate", _text, False),
    "key": ("key", _text, False),
    "websocket-max-message": ("websocket_max_message", _number(int, 125, 1 << 31), False),
    "access-log": ("access_log", _text, False),
    "heartbeat": ("heartbeat", _number(float, 0), False),
    "header-timeout": ("header_timeout", _number(float, 0.1), False),
    "zmq-hwm": ("zmq_hwm", _number(int, 1), False),
}

VHOST_OPTIONS = {
    "node": ("nodes", _name, True),
    "alias": ("aliases", _hostname, True),
    "bind": ("binds", _bind, True),
    "bind-ssl": ("ssl_binds", _bind, True),
    "certificate": ("certificate", _text, False),
    "key": ("key", _text, False),
    "sessions": ("sessions", _number(int, 1), False),
    "timeout": ("timeout", _number(float, 0.1), False),
    "zmq": ("zmq", _zmq, False),
    "cache": ("cache", _number(int, 0), False),
    "bandwidth": ("bandwidth", _number(int, 0), False),
}

_COMMENT = re.compile(r"\s[;#]")
_KEY_LINE = re.compile(r"\s*([^=\[\s][^=]*?)\s*=(.*)$")


def _rewrite(lines):
    """Make configobj keep every occurrence of a key and our ``;`` comments."""
    out = []
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            out.append("")
            continue
        m = _COMMENT.search(line)
        if m:
            line = line[:m.start()]
        if stripped.startswith("["):
            out.append(line.strip())
            continue
        km = _KEY_LINE.match(line)
        if km is None:
            out.append(line)     # configobj reports it, with this line number
            continue
        key, value = km.group(1), km.group(2).strip()
        value = value.replace('"""', '\\"\\"\\"').replace("'''", "\\'\\'\\'")
        out.append("%s@%d = %s" % (key.lower(), number, value))
    return out


def _items(section):
    """(option, line, value) of a configobj section, in file order."""
    result = []
    for key, value in section.items():
        if isinstance(value, dict):
            continue
        option, _, line = key.rpartition("@")
        result.append((option, int(line), value))
    return result


def _subsections(section):
    return [(k, v) for k, v in section.items() if isinstance(v, dict)]


def _section_lines(lines):
    found = {}
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("[") and "]" in stripped:
            found.setdefault(stripped[1:stripped.index("]")].strip(), number)
    return found


def load(path, check_files=True):
    """Read, parse and check ``path``; return a Config or raise ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            raw_lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(path, None, None, "cannot read: %s" % (e.strerror or e)) from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "not UTF-8 text") from None
    return parse(raw_lines, path, check_files)


def parse(raw_lines, path="<config>", check_files=True):
    try:
        parsed = configobj.ConfigObj(_rewrite(raw_lines), list_values=False,
                                     interpolation=False, raise_errors=True,
                                     encoding="utf-8")
    except configobj.DuplicateError as e:
        raise ConfigError(path, e.line_number, None,
                          "section defined twice: %s" % e.line.strip()) from None
    except configobj.ConfigObjError as e:
        line = getattr(e, "line_number", None)
        text = raw_lines[line - 1].strip() if line and line <= len(raw_lines) else ""
        raise ConfigError(path, line, None,
                          "syntax error: expected [SECTION], KEY = VALUE or a comment, "
                          "got %r" % text) from None

    section_lines = _section_lines(raw_lines)
    config = Config(path)
    if GLOBAL_SECTION not in parsed:
        raise ConfigError(path, None, None, "no [blastbeat] section")

    names = {}
    for name, section in parsed.items():
        if not isinstance(section, dict):
            option, _, line = name.rpartition("@")
            config.warnings.append("%s:%s: option %r outside any section ignored"
                                   % (path, line, option))
            continue
        sline = section_lines.get(name)
        for sub, _ in _subsections(section):
            config.warnings.append("%s: [%s] nested section [[%s]] ignored" % (path, name, sub))
        if name == GLOBAL_SECTION:
            _apply(config, section, GLOBAL_OPTIONS, path, name, config)
        elif name.startswith(VHOST_PREFIX):
            vname = name[len(VHOST_PREFIX):].strip()
            try:
                vname = _hostname(vname, sline)
            except ValueError as e:
                raise ConfigError(path, sline, None, "virtual host name: %s" % e,
                                  section=name) from None
            vhost = VHost(vname, sline)
            _apply(vhost, section, VHOST_OPTIONS, path, name, config)
            config.vhosts.append(vhost)
        else:
            config.warnings.append("%s:%s: unknown section [%s] ignored"
                                   % (path, sline, name))

    for vhost in config.vhosts:
        section = VHOST_PREFIX + vhost.name
        if not vhost.nodes:
            raise ConfigError(path, vhost.line, "node",
                              "virtual host %s lists no node; expected node = NAME"
                              % vhost.name, section=section)
        for hostname in vhost.names:
            if hostname in names:
                raise ConfigError(path, vhost.line, None,
                                  "host name %s is already used by virtual host %s"
                                  % (hostname, names[hostname].name), section=section)
            names[hostname] = vhost
        if vhost.sessions is None:
            vhost.sessions = config.sessions
        if vhost.timeout is None:
            vhost.timeout = config.timeout
        if vhost.ssl_binds or (config.ssl_binds and not vhost.binds):
            if vhost.certificate is None:
                vhost.certificate = config.certificate
                if vhost.key is None:
                    vhost.key = config.key
            if vhost.key is None:
                vhost.key = vhost.certificate     # a PEM holding both

    _resolve_paths(config)
    if not config.vhosts:
        config.warnings.append("%s: no virtual host ([blastbeat:NAME]) defined: "
                               "every request gets 404" % path)
    if not config.zmq and any(v.zmq is None for v in config.vhosts):
        raise ConfigError(path, None, "zmq",
                          "no ZeroMQ endpoint; expected zmq = tcp://ADDR:PORT",
                          section=GLOBAL_SECTION)
    if not (config.binds or config.ssl_binds or any(v.own_binds for v in config.vhosts)):
        raise ConfigError(path, None, "bind",
                          "nothing to listen on; expected bind = ADDR:PORT",
                          section=GLOBAL_SECTION)
    _check_duplicate_binds(config)
    if os.getuid() == 0:
        _check_user(config)
    if check_files:
        from . import tls
        tls.check_config(config)
    return config


def _resolve_paths(config):
    """Relative file names are relative to the configuration file."""
    base = os.path.dirname(os.path.abspath(config.path))

    def resolve(name):
        if name is None or os.path.isabs(name) or name == "stderr":
            return name
        return os.path.join(base, name)

    config.certificate = resolve(config.certificate)
    config.key = resolve(config.key)
    config.access_log = resolve(config.access_log)
    for vhost in config.vhosts:
        vhost.certificate = resolve(vhost.certificate)
        vhost.key = resolve(vhost.key)


def _apply(target, section, options, path, section_name, config):
    seen = {}
    for option, line, value in _items(section):
        spec = options.get(option)
        if spec is None:
            config.warnings.append("%s:%d: [%s] unknown option %r ignored"
                                   % (path, line, section_name, option))
            continue
        attr, parser, repeatable = spec
        if not repeatable and option in seen:
            config.warnings.append("%s:%d: [%s] %s set again (first at line %d); "
                                   "the last value counts"
                                   % (path, line, section_name, option, seen[option]))
        seen.setdefault(option, line)
        config.lines.setdefault((section_name, option), line)
        try:
            parsed = parser(value.strip(), line)
        except ValueError as e:
            raise ConfigError(path, line, option, str(e), section=section_name) from None
        if repeatable:
            items = getattr(target, attr)
            if option == "node" and parsed in items:
                config.warnings.append("%s:%d: [%s] node %s listed twice"
                                       % (path, line, section_name, parsed))
                continue
            items.append(parsed)
        else:
            setattr(target, attr, parsed)


def _check_user(config):
    """Started as root, the server switches to uid/gid: they must exist."""
    import grp
    import pwd
    for option, value, lookup in (("uid", config.uid, pwd.getpwnam),
                                  ("gid", config.gid, grp.getgrnam)):
        if value.isdigit():
            continue
        try:
            lookup(value)
        except KeyError:
            raise ConfigError(config.path, config.lines.get((GLOBAL_SECTION, option)),
                              option, "no such %s %r (the server switches to it when "
                              "started as root)" % ("user" if option == "uid" else "group",
                                                    value), section=GLOBAL_SECTION) from None


def _check_duplicate_binds(config):
    plain = {}
    secure = {}
    all_plain = list(config.binds) + [b for v in config.vhosts for b in v.binds]
    all_ssl = list(config.ssl_binds) + [b for v in config.vhosts for b in v.ssl_binds]
    for addr in all_ssl:
        secure.setdefault(addr.key, addr)
    for addr in all_plain:
        if addr.key in secure:
            raise ConfigError(config.path, addr.line, "bind",
                              "%s is also a bind-ssl address" % addr)
        plain.setdefault(addr.key, addr)


def emperor_fd():
    """The uWSGI Emperor's descriptor when run as a vassal, else None."""
    value = os.environ.get("UWSGI_EMPEROR_FD")
    if value is None or not value.isdigit():
        return None
    return int(value)
