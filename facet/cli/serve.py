"""`facet serve`: check the settings and the model folder, then run the BentoML server under
facet.serve.supervise."""
from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path
from typing import Optional

import typer

from facet import shipped
from facet.cli._common import _fail


def serve(models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` "
                                               "(default: the settings' models, else the photo "
                                               "models shipped with facet)."),
          host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 behind a load balancer)."),
          port: int = typer.Option(3000, help="Port to listen on."),
          config: Optional[Path] = typer.Option(None, help="TOML settings file (see README)."),
          workers: Optional[int] = typer.Option(None, help="HTTP front-end processes."),
          model_workers: Optional[int] = typer.Option(None, help="Model processes."),
          batching: Optional[bool] = typer.Option(None, "--batching/--no-batching",
                                                  help="Adaptive batching of concurrent requests."),
          device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or tensorrt (opt-in: "
                                               "builds engines on first use)."),
          ui: Optional[bool] = typer.Option(None, "--ui/--no-ui", help="The try-it page at /ui."),
          api_tokens_file: Optional[Path] = typer.Option(
              None, help="File of bearer tokens, one per line (one per client; read again when "
              "it changes). With tokens (this or FACET_API_TOKENS) every route but the probes "
              "and the pages needs 'Authorization: Bearer <token>'."),
          tls_certfile: Optional[Path] = typer.Option(None, help="PEM certificate (chain): serve "
                                                      "HTTPS (with --tls-keyfile)."),
          tls_keyfile: Optional[Path] = typer.Option(None, help="PEM private key of --tls-certfile."),
          ):
    """Serve the exported models over HTTP (BentoML).

    The options override the FACET_* environment variables, which override the --config file."""
    from facet.serve.access import exposure_warnings
    from facet.serve.config import ServeConfig
    from facet.serve.predictor import Predictor
    from facet.serve.supervise import run_server
    env = dict(os.environ)
    if config:
        env["FACET_CONFIG"] = str(config.resolve())
    overrides = {"models": models and str(models.resolve()), "workers": workers,
                 "model_workers": model_workers,
                 "batching": batching, "device": device, "ui": ui,
                 **{k: v and str(v.resolve()) for k, v in (("api_tokens_file", api_tokens_file),
                                                          ("tls_certfile", tls_certfile),
                                                          ("tls_keyfile", tls_keyfile))}}
    env.update({f"FACET_{k.upper()}": str(v) for k, v in overrides.items() if v is not None})
    try:
        settings = ServeConfig.load(env)
        tokens = settings.tokens()
        if settings.tls:  # a wrong path, a key that does not match: one line here
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                settings.tls_certfile, settings.tls_keyfile)
    except (ValueError, OSError) as exc:
        _fail(f"bad serve settings: {exc}")
    try:  # a broken model folder or detector is one clear line here, not a traceback per worker
        Predictor(settings.model_dir, settings.answer_options(), device="cpu", threads=1)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        _fail(str(exc))
    if not settings.models:
        typer.echo(shipped.NOTICE, err=True)
    for warning in exposure_warnings(host, tokens.enabled, settings.tls):
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    base = f"{'https' if settings.tls else 'http'}://{host}:{port}"
    typer.echo(f"serving {settings.model_dir} on {base}/v1 "
               f"(batching {'on' if settings.batching else 'off'}; "
               + (f"{len(tokens)} bearer token(s)" if tokens.enabled else "no tokens") + ")"
               + (f"; try it at {base}/ui/" if settings.ui else ""), err=True)
    cmd = [sys.executable, "-m", "bentoml", "serve", "facet.serve.service:Facet",
           "--host", host, "--port", str(port)]
    if settings.tls:
        cmd += ["--ssl-certfile", settings.tls_certfile, "--ssl-keyfile", settings.tls_keyfile]
    raise typer.Exit(run_server(cmd, env))
