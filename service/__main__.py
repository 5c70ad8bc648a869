"""``python -m service`` / ``realnvp-serve``: run the service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import uvicorn

from service.core.config import Settings
from service.main import create_app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags; anything not given comes from the environment (see docs/service.md)."""
    parser = argparse.ArgumentParser(prog="realnvp-serve", description="Serve the flows of MODEL_DIR over HTTP.")
    parser.add_argument("--host", help="interface to bind (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT or 8000)")
    parser.add_argument("--model-dir", help="folder of model folders (default: MODEL_DIR or model_store/)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Build settings from the environment and flags, then serve until SIGINT/SIGTERM (draining queues)."""
    args = parse_args(argv)
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("model_dir", args.model_dir))
        if value is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn drains on SIGTERM, then re-raises the signal to the handler it found: make that a clean exit (0),
    # the ordinary way a supervisor stops the service, rather than death by the signal (143).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=None,
    )


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


if __name__ == "__main__":
    main()
