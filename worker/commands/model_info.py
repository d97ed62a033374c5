"""`streamrec model-info`: the parameter calculator for a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from worker.commands.common import fail

_HELP = """Parameters, FLOPs and activation memory of a model directory's encoder.

DIR is verified first (as `streamrec eval` does). Reported:

  parameters   per component (embeddings, per layer, final norm) and in total,
               checked against the weights in DIR
  FLOPs        matmul FLOPs (2 per multiply-add) per NEW event (incremental,
               previous K/V cached, history of L events) and per FULL sequence
               of length L (causal, L(L+1)/2 query-key pairs), plus the output
               (scoring one user against all items, 2*dim*num_items)
  memory       float32 activations for a dense batch (B, L): inference peak
               (one layer live) and training (all layers saved for backward)

L defaults to the model's max_seq_len, B to 64. Formulas: docs/model.md
("model-info") and pipeline/model_info.py.

Examples:

  streamrec model-info models/default

  streamrec model-info models/ml-100k --seq-len 200 --batch 128 --json
"""


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def register(app: typer.Typer) -> None:
    @app.command("model-info", help=_HELP)
    def model_info_cmd(
        model_dir: Path = typer.Argument(..., metavar="DIR", help="model directory written by `streamrec train`"),
        seq_len: Optional[int] = typer.Option(None, "--seq-len", "-L", help="sequence length L (default: the model's max_seq_len)"),
        batch: int = typer.Option(64, "--batch", "-B", help="batch size B for the activation memory"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
    ) -> None:
        import orjson

        from pipeline.model_dir import ModelDirError, load_model_dir
        from pipeline.model_info import model_info

        if seq_len is not None and seq_len < 1:
            fail(f"--seq-len must be >= 1, got {seq_len}")
        if batch < 1:
            fail(f"--batch must be >= 1, got {batch}")
        try:
            bundle = load_model_dir(model_dir)
        except ModelDirError as e:
            fail(str(e))
        info = model_info(bundle.config, seq_len, batch)
        actual = sum(p.numel() for p in bundle.encoder.parameters())
        info["parameters"]["weights_total"] = actual
        info["parameters"]["matches_weights"] = actual == info["parameters"]["total"]
        info["version"] = bundle.version
        info["path"] = str(model_dir)
        if as_json:
            typer.echo(orjson.dumps(info).decode())
            return
        from rich.console import Console
        from rich.table import Table

        con = Console()
        p = info["parameters"]
        t = Table(title=f"{bundle.version} ({info['arch']}): parameters")
        t.add_column("component")
        t.add_column("parameters", justify="right")
        for k, v in p["components"].items():
            t.add_row(k if k != "layers" else f"layers ({p['num_layers']} x {sum(p['per_layer'].values())})", f"{v:,}")
        for k, v in p["per_layer"].items():
            t.add_row(f"  per layer: {k}", f"{v:,}")
        t.add_row("[bold]total[/]", f"[bold]{p['total']:,}[/]" + ("" if p["matches_weights"] else f" (weights: {actual:,}!)"))
        con.print(t)
        f = info["flops"]
        t = Table(title=f"FLOPs (matmul, 2 per multiply-add), L = {f['seq_len']}")
        t.add_column("")
        for c in ("projections", "attention", "encoder", "output", "total"):
            t.add_column(c, justify="right")
        for name, key in (("per new event (KV cached)", "per_new_event"), ("per full sequence", "per_full_sequence")):
            r = f[key]
            t.add_row(name, *(_human(r[c]) for c in ("projections", "attention", "encoder", "output", "total")))
        con.print(t)
        m = info["activation_memory"]
        con.print(
            f"activations (float32) for a batch (B={m['batch']}, L={m['seq_len']}): "
            f"inference peak {_human(m['inference_peak_bytes'], 'B')}, "
            f"training (saved for backward) {_human(m['training_saved_bytes'], 'B')}",
            highlight=False,
        )
