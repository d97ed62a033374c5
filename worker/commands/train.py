"""`streamrec train`: train the HSTU encoder and write a verified model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from worker.commands.common import fail

_HELP = """Train the HSTU sequence encoder and write a model directory.

The model directory (manifest.json with sha256 of every file, hstu_config.json,
hstu.safetensors, items.txt, metrics.json, optional titles.json) is what
`streamrec worker --model-dir DIR` and `streamrec eval DIR` load; they refuse a
directory that does not verify.

Data:

  synthetic  a seeded synthetic world with planted structure (item clusters,
             a planted next-item chain, skip = move away); the default, and the
             world `streamrec produce` draws live traffic from. Metrics are
             reported next to the planted-truth (Bayes-optimal) ceiling.

  ml-100k    MovieLens-100k read from the installed `recbole` wheel
             (pip install --no-deps recbole); never copied into the repo.

Protocol: chronological leave-one-out (last event = test, the one before =
validation), full ranking over all items, the user's own history excluded,
HR@10/NDCG@10/HR@50/NDCG@50; early stopping on validation NDCG@10; fixed seeds.
Training stops at --epochs, on early stopping, or at --max-minutes.

Examples:

  streamrec train --data synthetic --out models/default

  streamrec train --quick --out /tmp/m          (a tiny model in seconds)
"""


def register(app: typer.Typer) -> None:
    @app.command("train", help=_HELP, no_args_is_help=False)
    def train_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="directory to write the model to (created; an existing model there is replaced)"),
        data: str = typer.Option("synthetic", "--data", help="dataset: synthetic | ml-100k"),
        seed: int = typer.Option(0, "--seed", help="seed for initialisation, batching and negative sampling"),
        data_seed: int = typer.Option(0, "--data-seed", help="seed of the synthetic world (keep 0 to match `streamrec produce`'s default traffic)"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="maximum epochs (default: synthetic 20, ml-100k 200, --quick 10)"),
        quick: bool = typer.Option(False, "--quick", help="tiny model and data (synthetic only): a smoke run in seconds"),
        max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="wall-clock cap for the training loop in minutes (default: synthetic 3, ml-100k 5); on a busy machine it stops training early, so results then depend on load"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="sequences per mini-batch (default: synthetic 128, ml-100k 64)"),
        lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate (default 2e-3)"),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
        arch: str = typer.Option("hstu", "--arch", help="encoder: hstu (default) | sasrec (the SASRec baseline, same harness; docs/model.md)"),
        generator: bool = typer.Option(True, "--generator/--no-generator", help="after the encoder, train the slate generator (a small Llama decoder, docs/generator.md) into the same directory"),
        generator_minutes: float = typer.Option(2.0, "--generator-minutes", help="wall-clock cap for the generator's training loop"),
    ) -> None:
        from rich.console import Console

        from pipeline.datasets import DatasetUnavailable
        from pipeline.model_dir import ModelDirError
        from pipeline.train import TrainConfig, train

        console = Console()
        if data not in ("synthetic", "ml-100k"):
            fail(f"unknown --data {data!r}; choose synthetic or ml-100k")
        if quick and data != "synthetic":
            fail("--quick is for --data synthetic only")
        if arch not in ("hstu", "sasrec"):  # --arch (issue 3)
            fail(f"unknown --arch {arch!r}; choose hstu or sasrec")
        overrides: dict = {"seed": seed, "arch": arch}
        for k, v in (("epochs", epochs), ("max_minutes", max_minutes), ("batch_size", batch_size), ("lr", lr), ("threads", threads)):
            if v is not None:
                if v <= 0:
                    fail(f"--{k.replace('_', '-')} must be positive, got {v}")
                overrides[k] = v
        if quick:
            cfg = TrainConfig.quick(**overrides)
            cfg.data_options = {**cfg.data_options, "seed": data_seed}
        else:
            cfg = TrainConfig.for_data(data, **overrides)
            if data == "synthetic":
                cfg.data_options = {"seed": data_seed}
        try:
            metrics = train(cfg, out, progress=progress)
        except DatasetUnavailable as e:
            fail(str(e))
        except (ModelDirError, OSError) as e:
            fail(f"cannot write the model directory {out}: {e}")
        print_metrics(console, metrics)
        if generator and arch == "hstu":
            from pipeline.generator.train import GeneratorTrainConfig, train_generator

            gcfg = (GeneratorTrainConfig.quick(seed=seed) if quick
                    else GeneratorTrainConfig(seed=seed, max_minutes=generator_minutes))
            console.print("training the generator (teacher forcing on next items, restricted to retrieval candidates)")
            g = train_generator(out, cfg=gcfg, progress=progress)
            gen, ret = g["test"]["generator"], g["test"]["retrieval"]
            console.print(f"generator {g['version']}: slate HR@10 {gen['hr@10']:.4f} NDCG@10 {gen['ndcg@10']:.4f} "
                          f"(retrieval top-10: {ret['hr@10']:.4f} / {ret['ndcg@10']:.4f}; "
                          f"{g['train']['epochs_run']} epochs, {g['train']['train_wall_s']} s)", highlight=False)


def print_metrics(console, metrics: dict) -> None:
    from rich.table import Table

    t = metrics.get("train", {})
    table = Table(title=f"{metrics.get('version', '')}  ({metrics.get('data', {}).get('name', '?')}, test split, {metrics['test']['users']} users)")
    table.add_column("model")
    for col in ("hr@10", "ndcg@10", "hr@50", "ndcg@50"):
        table.add_column(col, justify="right")
    rows = [({"sasrec": "SASRec"}.get(metrics.get("arch"), "HSTU"), metrics["test"])]
    names = {"oracle": "planted truth (ceiling)", "popularity": "popularity", "random": "random"}
    for key in ("oracle", "popularity", "random"):
        if key in metrics.get("baselines", {}):
            rows.append((names[key], metrics["baselines"][key]))
    for name, m in rows:
        table.add_row(name, *(f"{m[c]:.4f}" for c in ("hr@10", "ndcg@10", "hr@50", "ndcg@50")))
    console.print(table)
    console.print(
        f"best epoch {t.get('best_epoch')} of {t.get('epochs_run')} ({t.get('stopped')}), "
        f"train {t.get('train_wall_s')} s + eval {t.get('eval_wall_s')} s on {t.get('threads')} threads, "
        f"{t.get('parameters')} parameters; written to {metrics.get('path')}",
        highlight=False,
    )
