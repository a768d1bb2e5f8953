"""`specgen serve`: parse options, build a ServeConfig, run the OpenAI-compatible server (uvicorn)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

import typer

from specgen.errors import SpecgenError
from specgen.validate import input_path


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def method_options(method_config: Optional[Path], index: Optional[str], draft_model: Optional[str]) -> dict[str, dict[str, Any]]:
    """Per-method options: the --method-config file, then --index / --draft-model for every method
    whose config has that field."""
    from specgen.cli.bench import read_method_config
    from specgen.proposers.registry import available_methods, get_method

    options = {m: dict(v) for m, v in read_method_config(method_config).items()}
    for m in available_methods():
        fields = {f.name for f in dataclasses.fields(get_method(m).config_cls)}
        for name, value in (("index", index), ("draft_model", draft_model)):
            if value is not None and name in fields:
                options.setdefault(m, {}).setdefault(name, value)
    return options


def serve(
    model: Optional[str] = typer.Option(None, "--model", help="Model to serve (default: the embedded SmolLM2-135M-Instruct)."),
    method: str = typer.Option("pld", "--method", help="Default method of a request (a request's `method` field overrides)."),
    method_config: Optional[Path] = typer.Option(None, "--method-config", help="YAML/JSON options per method."),
    index: Optional[str] = typer.Option(None, "--index", help="rest/sense: datastore folder from build-index."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="sd/specguard: the draft model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; other than loopback needs --api-key."),
    port: int = typer.Option(8000, "--port", help="TCP port (0 = any free port)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require Authorization: Bearer KEY (or set SPECGEN_API_KEY)."),
    max_queue: int = typer.Option(256, "--max-queue", help="Waiting requests beyond this get 429."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", help="Sequences decoded together in one verification forward."),
    spec_disable_batch_size: Optional[int] = typer.Option(None, "--spec-disable-batch-size",
                                                          help="Draft nothing while this many sequences run (default: "
                                                               "decided per batch size from measured throughput)."),
    shared_calibration: bool = typer.Option(True, "--shared-calibration/--per-request-calibration",
                                            help="Tree sizing's acceptance estimates: learnt across the requests "
                                                 "of a method, or afresh per request (as generate does)."),
    stored_calibration: bool = typer.Option(False, "--stored-calibration",
                                            help="Start each method's shared estimates from the ones `specgen "
                                                 "generate` keeps on disk, and write them back at shutdown."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
) -> None:
    """Serve the OpenAI completions and chat API with speculative decoding, on 127.0.0.1 by default."""
    from rich.console import Console

    from specgen.device import check_dtype_spec, resolve_device
    from specgen.models import check_model_spec, load_model
    from specgen.proposers.registry import available_methods, make_config
    from specgen.serve.app import create_app
    from specgen.serve.config import ServeConfig

    if index is not None:
        input_path("index", index, "dir")
    cfg = ServeConfig(model=model, method=method, method_options=method_options(method_config, index, draft_model),
                      host=host, port=port, api_key=api_key or os.environ.get("SPECGEN_API_KEY") or None,
                      max_queue=max_queue, max_batch_size=max_batch_size,
                      spec_disable_batch_size=spec_disable_batch_size, device=device, dtype=dtype,
                      shared_calibration=shared_calibration, stored_calibration=stored_calibration)
    if method not in available_methods():
        raise SpecgenError(f"unknown method '{method}' (choose from {', '.join(available_methods())})")
    make_config(method, dict(cfg.method_options.get(method, {})))  # the default method's options: one line now
    resolve_device(device)
    check_dtype_spec(dtype)
    check_model_spec(model)
    import uvicorn

    app = create_app(load_model(model, dtype=dtype, device=device), cfg)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    Console(stderr=True).print(f"serving {cfg.served_name} (default method {method}) on http://{host}:{port}/v1")
    server.run()
