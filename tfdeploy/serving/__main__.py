"""``tfdeploy-model-server`` / ``python -m tfdeploy.serving``: tensorflow_model_server's
command line, same flag names, defaults and meaning.

    tfdeploy-model-server --port=8500 --rest_api_port=8501 \\
        --model_name=deeplab --model_base_path=/abs/path/models/deeplab
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from tfdeploy.errors import UserError
from tfdeploy.serving.options import ServerOptions
from tfdeploy.tfs import flags, onednn
from tfdeploy.tfs.flags import Kind


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like any CLI mistake
        self.exit(2, f"tfdeploy-model-server: error: {message}\n"
                     "(run with --help for the flags)\n")


def _bool(text: str) -> bool:
    try:
        return flags.parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(flag: flags.ServerFlag):
    """argparse type of a numeric flag with a minimum (a one-line error below it)."""
    def parse(text: str) -> int | float:
        try:
            return flags.parse_number(flag, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = flag.type.__name__  # argparse names the type in its messages
    return parse


_GROUPS = {Kind.OFFICIAL: "tensorflow_model_server flags",
           Kind.OURS: "tfdeploy additions (tensorflow_model_server would refuse them)",
           Kind.WARNED: "accepted and ignored, with a warning (tuning only)",
           Kind.REFUSED: "refused: they would change what clients get"}


def build_parser() -> argparse.ArgumentParser:
    """The parser, one argument per row of the flag table (tfdeploy.tfs.flags)."""
    p = _Parser(prog="tfdeploy-model-server", allow_abbrev=False,
                description="TF Serving-compatible model server (gRPC + REST) for SavedModels.",
                epilog=__doc__.split("\n\n", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {kind: p.add_argument_group(title) for kind, title in _GROUPS.items()}
    for f in flags.FLAGS:
        add = groups[f.kind].add_argument
        if not f.implemented:  # the raw text, so a refused flag set to false passes
            add(f"--{f.name}", default=None, nargs="?", const="true", metavar=f.type.__name__,
                help=f.help)
        elif f.type is bool:  # --name, --name=true or --name=false
            add(f"--{f.name}", type=_bool, nargs="?", const=True, default=f.default,
                metavar="bool", help=f"{f.help} (default {str(f.default).lower()})")
        elif f.minimum is not None:
            add(f"--{f.name}", type=_number(f), default=f.default, metavar=f.type.__name__,
                help=f"{f.help} (default {f.default_text or repr(f.default)})")
        else:
            add(f"--{f.name}", type=f.type, default=f.default,
                help=f"{f.help} (default {f.default!r})" if f.default != "" else f.help)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def options_from_args(argv: list[str] | None = None):
    """(ServerOptions, names of the unimplemented flags given, --version asked)."""
    args = build_parser().parse_args(argv)
    ignored = [f.name for f in flags.FLAGS
               if not f.implemented and getattr(args, f.name) is not None]
    values = {f.name: getattr(args, f.name) for f in flags.implemented()}
    values["extra"] = {n: getattr(args, n) for n in ignored}
    return ServerOptions(**values), ignored, args.version


def onednn_for_int8(options, log: logging.Logger) -> None:
    """Turn TensorFlow's oneDNN kernels on (``TF_ENABLE_ONEDNN_OPTS=1``) when this CPU
    would leave them off, ``TF_ENABLE_ONEDNN_OPTS`` is unset, and a model's base path
    holds a version that runs only on them (an int8 export): such a version would load
    and fail every request.  Must run before TensorFlow starts.  With the variable set
    to 0, those versions fail to load, saying why (``SavedModelLoader``)."""
    if onednn.setting() is not None or onednn.on_by_default(onednn.cpu_flags()):
        return
    tags = tuple(t.strip() for t in options.saved_model_tags.split(",") if t.strip())
    found = onednn.versions_needing_onednn(
        onednn.base_paths(options.model_base_path, options.model_config_file), tags)
    if found:
        onednn.turn_on_if_unset()
        first, ops = next(iter(found.items()))
        log.info("%s runs on TensorFlow's oneDNN kernels (%s), which this CPU has off by "
                 "default: turned on (%s=1; set it to 0 to keep them off, and such versions "
                 "from loading)", first, ", ".join(ops), onednn.ENV)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("tfdeploy.serving")
    options, ignored, show_version = options_from_args(argv)
    if show_version:
        from importlib.metadata import version

        print(f"tfdeploy-model-server {version('tfdeploy')}")
        return 0
    refused = [n for n in ignored if flags.BY_NAME[n].kind is Kind.REFUSED
               and flags.is_set(options.extra[n])]
    if refused:
        print(f"tfdeploy-model-server: error: --{refused[0]} is not supported by "
              "tfdeploy-model-server (it would change what clients get); use "
              "tensorflow_model_server for it", file=sys.stderr)
        return 2
    for name in ignored:
        log.warning("flag --%s is not implemented by tfdeploy-model-server; ignored", name)
    from tfdeploy.serving.memory import use_system_allocator
    from tfdeploy.tfimport import quiet_import_tensorflow

    use_system_allocator()            # before TensorFlow starts: see serving/memory.py
    onednn_for_int8(options, log)     # likewise: see tfs/onednn.py
    quiet_import_tensorflow()
    from tfdeploy.serving.server import ModelServer
    from tfdeploy.tfs.codes import StatusError

    stop = threading.Event()
    server = None

    def on_signal(*_) -> None:
        if server is not None and server.accepting:
            # Once a port is open a client may be in flight, even while start() is
            # still opening the next one: drain, then stop (below, after start()).
            stop.set()
            return
        # Still waiting for the first models (their load retries may take minutes):
        # nothing listens or needs draining, so leave now, as tensorflow_model_server
        # does, without the interpreter's shutdown (a load may be inside TensorFlow).
        print("tfdeploy-model-server: stopped before the models loaded", file=sys.stderr)
        sys.stderr.flush()
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        server = ModelServer(options)
        server.start()
    except (StatusError, UserError) as exc:
        print(f"tfdeploy-model-server: error: {exc}", file=sys.stderr)
        if server is not None and server.manager.loads_running():
            logging.shutdown()  # a load inside TensorFlow: leave as below
            sys.stderr.flush()
            os._exit(2)
        return 2
    log.info("serving; pid %d", os.getpid())
    # Wake up now and then: the kernel may deliver SIGTERM to one of TensorFlow's or
    # gRPC's threads, and then nothing interrupts a main thread blocked in an untimed
    # wait, so the Python handler would never run (a server that ignores `docker stop`).
    while not stop.wait(0.5):
        pass
    log.info("shutting down: draining in-flight requests")
    server.stop()
    log.info("stopped")
    if server.manager.loads_running():
        # A load TensorFlow cannot interrupt is still running on a daemon thread: the
        # interpreter's shutdown would kill that thread inside TensorFlow, which aborts
        # the process.  Everything is closed and flushed; leave without it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
