"""Command line (spec §1): ``blastbeat [OPTIONS] CONFIG.ini``.

Exit codes: 0 clean stop, 1 run-time failure, 2 usage error, 78 (EX_CONFIG)
invalid configuration, 26 instead of 78 under a uWSGI Emperor (which then
does not respawn the vassal).  ``-t`` prints ``CONFIG: ok`` or the first
error and exits 0 or 1.
"""

import argparse
import logging
import sys

from . import __version__
from . import config as configmod

log = logging.getLogger("blastbeat")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write("blastbeat: %s\n" % message)
        sys.exit(2)


def build_parser():
    p = _Parser(prog="blastbeat",
                description="HTTP/HTTPS/WebSocket front server forwarding sessions "
                            "to ZeroMQ nodes.")
    p.add_argument("config", nargs="?", metavar="CONFIG.ini", help="configuration file")
    p.add_argument("--ini", metavar="CONFIG.ini",
                   help="configuration file (the form a uWSGI Emperor uses)")
    p.add_argument("-t", "--check", action="store_true",
                   help="check the configuration, print 'CONFIG: ok' or the first error")
    p.add_argument("--log-level", choices=sorted(LEVELS), default="info",
                   help="least severe level logged (default: info)")
    p.add_argument("--version", action="version", version="blastbeat %s" % __version__)
    return p


def setup_logging(level):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("blastbeat")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False


def main(argv=None):
    args = build_parser().parse_args(argv)
    path = args.ini or args.config
    if args.ini and args.config:
        build_parser().error("give the configuration once, as a path or with --ini")
    if not path:
        build_parser().error("the configuration file is required")
    setup_logging(args.log_level)
    emperor_fd = configmod.emperor_fd()

    if args.check:
        try:
            config = configmod.load(path)
        except configmod.ConfigError as e:
            print("CONFIG: %s" % e, file=sys.stderr)
            return 1
        for warning in config.warnings:
            print("warning: %s" % warning, file=sys.stderr)
        print("CONFIG: ok")
        return 0

    try:
        config = configmod.load(path)
    except configmod.ConfigError as e:
        log.critical("invalid configuration: %s", e)
        return configmod.EX_EMPEROR_NO_RESPAWN if emperor_fd is not None else configmod.EX_CONFIG
    for warning in config.warnings:
        log.warning("%s", warning)

    from .server import Server
    import zmq
    try:
        server = Server(config, emperor_fd=emperor_fd)
        server.start()
    except (OSError, zmq.ZMQError) as e:
        log.critical("cannot start: %s", e)
        return 1
    server.install_signals()
    log.info("blastbeat %s started (pid %d) with %s", __version__,
             __import__("os").getpid(), path)
    code = server.run()
    log.info("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
