"""``lficam-app <checkpoint | run folder | sweep folder>``: serve the explorer page on this machine.

It binds 127.0.0.1 unless told otherwise (``--host 0.0.0.0`` shares it on the network: the page reads any
checkpoint path typed into it, so only do that on a network you trust). The path is checked before the server
starts, so a mistake is one sentence and exit code 2, not a page that never loads.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lficam.app.explorer import MAX_UPLOAD_BYTES, resolve_target
from lficam.core.errors import UserError

PAGE = Path(__file__).with_name("page.py")
TARGET_VARIABLE = "LFICAM_APP_TARGET"  # read by page.py
DATA_DIR_VARIABLE = "LFICAM_APP_DATA_DIR"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lficam-app",
        description="Explore a run's attention maps in the browser: its own map beside the CAMs, per-image "
        "scores and curves, FAM pairs, and the same image across a sweep's runs.",
    )
    parser.add_argument("path", help="a checkpoint (.ckpt, .safetensors), a run folder or a sweep folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default: 8501)")
    parser.add_argument("--data-dir", default=None, help="where the run's data set is cached on this machine")
    return parser.parse_args(argv)


def streamlit_arguments(args: argparse.Namespace) -> list[str]:
    """``streamlit run`` with the page and this server's settings: headless (the user opens the URL), no
    usage statistics sent anywhere, uploads capped at the explorer's limit."""
    return [
        "streamlit",
        "run",
        str(PAGE),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",  # no "Deploy" button: this page serves one user's runs
        "--server.maxUploadSize",
        str(MAX_UPLOAD_BYTES // 2**20),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if importlib.util.find_spec("streamlit") is None:
        print("Error: lficam-app needs Streamlit: pip install 'lficam[app]'.", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"Error: --port {args.port} is not a port; give a number from 1 to 65535.", file=sys.stderr)
        return 2
    try:
        target = resolve_target(args.path)
    except UserError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    os.environ[TARGET_VARIABLE] = str(target.path.resolve())
    if args.data_dir:
        os.environ[DATA_DIR_VARIABLE] = str(Path(args.data_dir).resolve())
    print(
        f"lficam-app: {target.kind} {target.path} ({len(target.checkpoints)} checkpoint(s)) on "
        f"http://{args.host}:{args.port}"
    )
    from streamlit.web import cli as streamlit_cli  # deferred: start-up time, and an optional extra

    sys.argv = streamlit_arguments(args)
    return int(streamlit_cli.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
