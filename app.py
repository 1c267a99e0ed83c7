"""Safety Geometry Explorer: the web app's launcher (the page itself: explorer/app/page.py).

    python app.py                        # the built-in demo model on http://127.0.0.1:7860
    python app.py --model llava-hf/llava-1.5-7b-hf --device cuda
    python app.py --model none --runs runs/   # finished runs only (plots, answers), no model loaded

The address answers at once: a status page (explorer.app.starting, standard library only) says what is loading
until the model, its calibration and the page are ready, then the app takes the same address over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from explorer.app.model_options import add_model_arguments
from explorer.app.starting import StartingPage

if TYPE_CHECKING:
    from explorer.app.ui_session import AppSettings


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Safety Geometry Explorer web app")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--allow-model-switch", action="store_true",
                        help="let every visitor load any model from the page, from any machine; by default only a "
                             "request from this machine that names it (http://127.0.0.1 or localhost, no proxy in "
                             "front) may, and only on a loopback-only server")
    parser.add_argument("--allowed-models", default="",
                        help="comma list of the only model ids visitors may load from the page")
    parser.add_argument("--runs", action="append", type=Path, default=None,
                        help="a folder of finished eval runs the page may open (repeatable; default ./runs when it "
                             "exists and the server is loopback-only); with --model none the app shows runs only "
                             "and loads no model")
    return parser.parse_args(argv)


def _is_loopback(host: str) -> bool:
    """Only the two names Gradio's own cross-site request guard covers count as this machine alone; any other
    address (::1, 127.0.0.2, 0.0.0.0, a host name) is treated as reachable from elsewhere."""
    return host.strip().lower() in ("127.0.0.1", "localhost")


def settings_from_args(args: argparse.Namespace) -> AppSettings:
    """AppSettings for the command line. Model switching from the page: on a loopback-only server, any model, but
    only in requests from this machine that name it (decided per request, so a proxy or a rebound DNS name in front
    cannot); once the server is reachable from elsewhere, none; the operator may list models or allow any."""
    from explorer.app.ui_session import AppSettings

    allowed = tuple(m.strip() for m in args.allowed_models.split(",") if m.strip())
    exposed = args.share or not _is_loopback(args.host)
    switch = "listed" if allowed else "any" if args.allow_model_switch else "off" if exposed else "local"
    return AppSettings(model=args.model, device=args.device, dtype=args.dtype, device_map=args.device_map,
                       trust_remote_code=args.trust_remote_code, calibration=args.calibration,
                       calibration_limit=args.calibration_limit, model_switch=switch, allowed_models=allowed)


def run_roots_from_args(args: argparse.Namespace) -> list[Path]:
    """The run folders the page may list: --runs; else ./runs when it exists and the server is this machine's
    alone (a run holds every answer of an evaluation: a shared server shows only what the operator names)."""
    local = not args.share and _is_loopback(args.host)
    roots = args.runs if args.runs else [Path("runs")] if Path("runs").is_dir() and local else []
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise SystemExit(f"error: --runs {', '.join(missing)}: no such folder")
    return [r.resolve() for r in roots]


def _start_page(args: argparse.Namespace) -> StartingPage | None:
    """The status page on the app's address, before anything heavy is imported; None where it cannot bind (the
    real launch then reports the address in use, as before)."""
    try:
        return StartingPage(args.host, args.port, args.model).start()
    except OSError:
        return None


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    roots = run_roots_from_args(args)
    page = _start_page(args) if args.model != "none" else None

    def say(fraction: float, message: str) -> None:
        print(f"  {message}", flush=True)
        if page is not None:
            page.say(fraction, message)

    try:
        say(0.02, "importing torch and Gradio")
        from explorer.app.page import LAUNCH_OPTIONS, build_app, build_viewer_app
        from explorer.app.ui_session import AppState
        from explorer.model.models import ModelLoadError

        launch = {"server_name": args.host, "server_port": args.port, "share": args.share, **LAUNCH_OPTIONS}
        if args.model == "none":
            if not roots:
                raise SystemExit("error: --model none shows finished runs only: give --runs DIR")
            build_viewer_app(roots).launch(**launch)
            return
        settings = settings_from_args(args)
        print(f"Loading {args.model} and its calibration profile (cached on disk after the first run)…", flush=True)
        try:
            state = AppState.start(settings, progress=say)
        except (ModelLoadError, ValueError, OSError) as err:
            raise SystemExit(f"error: cannot start with --model {args.model!r}: {err}") from None
        say(0.95, "building the page")
        app = build_app(state, roots)
    finally:
        if page is not None:
            page.stop()
    app.launch(**launch, prevent_thread_lock=True)
    print(f"Ready on http://{args.host}:{args.port}/", flush=True)
    app.block_thread()


if __name__ == "__main__":
    sys.exit(main())
