"""`streamrec eval`: evaluate a model directory offline (leave-one-out, full ranking)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from worker.commands.common import fail

_HELP = """Evaluate a trained model directory on its dataset's held-out events.

DIR is verified first (manifest sha256 of every file, config, weight shapes,
item vocabulary); a directory that does not verify is refused.

The dataset defaults to the one recorded in DIR/metrics.json at training time
(same seed and size, so the split is the same); --data overrides it (the
dataset's item vocabulary must match the model's).

Protocol: chronological leave-one-out (the last event of each user is the test
target, the one before it the validation target), full ranking over all items,
the user's own history excluded, ties counted against the target.

Output: a table, or with --json exactly one JSON object on stdout with
hr@10, ndcg@10, hr@50, ndcg@50, users, encoder, generator, version, data,
split and eval_wall_s (plus "baselines" with --baselines).

Examples:

  streamrec eval models/default

  streamrec eval models/default --json --baselines
"""


def register(app: typer.Typer) -> None:
    @app.command("eval", help=_HELP)
    def eval_cmd(
        model_dir: Path = typer.Argument(..., metavar="DIR", help="model directory written by `streamrec train`"),
        data: Optional[str] = typer.Option(None, "--data", help="synthetic | ml-100k (default: the dataset the model was trained on)"),
        split: str = typer.Option("test", "--split", help="test | valid"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
        baselines: bool = typer.Option(False, "--baselines", help="also evaluate popularity, random and (synthetic) the planted-truth ceiling"),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)"),
        encoder: str = typer.Option("torch", "--encoder", help="encoder backend: auto | tensorrt | onnxruntime | torch (docs/backends.md)"),
        generator: Optional[str] = typer.Option(None, "--generator", help="also score the K=10 slates a generator backend decodes (vllm | torch | retrieval | auto; docs/generator.md): adds `slate` with its hr@10/ndcg@10 next to retrieval's full-ranking metrics"),
    ) -> None:
        import orjson
        import torch

        from pipeline.datasets import DatasetUnavailable, load_dataset
        from pipeline.evaluation import evaluate, leave_one_out, model_scorer, oracle_scorer, popularity_scorer, random_scorer
        from pipeline.model_dir import ModelDirError, load_model_dir
        from pipeline.recommender import Recommender

        if split not in ("test", "valid"):
            fail(f"--split must be test or valid, got {split!r}")
        if threads:
            torch.set_num_threads(threads)
        try:
            bundle = load_model_dir(model_dir)
        except ModelDirError as e:
            fail(str(e))
        recorded = bundle.metrics.get("data") if isinstance(bundle.metrics.get("data"), dict) else None
        if data is None:
            if recorded is None:
                fail(f"{model_dir}/metrics.json does not record the training dataset; pass --data synthetic|ml-100k")
            spec = recorded
        elif recorded is not None and recorded.get("name") == data:
            spec = recorded
        else:
            spec = {"name": data}
        t0 = time.monotonic()
        try:
            ds = load_dataset(spec)
        except DatasetUnavailable as e:
            fail(str(e))
        except (TypeError, ValueError) as e:
            fail(f"cannot rebuild dataset {spec!r}: {e}")
        if ds.items != bundle.items:
            fail(
                f"the model's item vocabulary ({len(bundle.items)} items) is not the vocabulary of dataset "
                f"{ds.name!r} ({len(ds.items)} items); evaluate it on the dataset it was trained on"
            )
        sp = leave_one_out(ds.user_ids, ds.sequences)
        cases = sp.test if split == "test" else sp.valid
        index = bundle.item_index
        from pipeline.encoders import BackendUnavailable, build_encoder
        from pipeline.encoders.registry import encoder_scorer

        try:
            user_encoder = build_encoder(bundle, encoder)
        except (BackendUnavailable, ValueError) as e:
            fail(str(e))
        scorer = model_scorer(bundle.encoder, index) if user_encoder.name == "torch" else encoder_scorer(user_encoder, bundle)
        result = evaluate(scorer, cases, index)
        out = {
            **{k: result[k] for k in ("hr@10", "ndcg@10", "hr@50", "ndcg@50")},
            "users": result["users"],
            "encoder": user_encoder.name,
            "generator": Recommender.generator_name,
            "version": bundle.version,
            "data": ds.name,
            "split": split,
        }
        if baselines:
            out["baselines"] = {
                "popularity": evaluate(popularity_scorer(sp.train, index), cases, index),
                "random": evaluate(random_scorer(len(index)), cases, index),
            }
            if ds.oracle is not None:
                out["baselines"]["oracle"] = evaluate(oracle_scorer(ds.oracle), cases, index)
        if generator is not None:
            from pipeline.generator.evaluate import evaluate_generator

            if generator not in ("vllm", "torch", "retrieval", "auto"):
                fail(f"unknown --generator {generator!r}; choose vllm, torch, retrieval or auto")
            try:
                slate = evaluate_generator(model_dir, generator, split, spec)
            except Exception as e:  # a missing generator model or an unavailable vLLM: say which
                fail(f"generator {generator}: {e}")
            out["generator"] = slate["generator"]
            out["slate"] = {k: slate[k] for k in ("hr@10", "ndcg@10", "users", "generator")}
        out["eval_wall_s"] = round(time.monotonic() - t0, 3)
        if as_json:
            typer.echo(orjson.dumps(out).decode())
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{bundle.version} on {ds.name} ({split} split, {out['users']} users)")
        table.add_column("model")
        for c in ("hr@10", "ndcg@10", "hr@50", "ndcg@50"):
            table.add_column(c, justify="right")
        name = "SASRec" if bundle.version.startswith("sasrec-") else "HSTU"  # --arch sasrec (issue 3)
        table.add_row(f"{name} ({out['encoder']} / {out['generator']})", *(f"{out[c]:.4f}" for c in ("hr@10", "ndcg@10", "hr@50", "ndcg@50")))
        names = {"oracle": "planted truth (ceiling)", "popularity": "popularity", "random": "random"}
        for key, m in out.get("baselines", {}).items():
            table.add_row(names[key], *(f"{m[c]:.4f}" for c in ("hr@10", "ndcg@10", "hr@50", "ndcg@50")))
        Console().print(table)
        Console().print(f"evaluated in {out['eval_wall_s']} s", highlight=False)
