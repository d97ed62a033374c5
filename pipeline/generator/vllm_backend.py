"""The ``vllm`` generator backend: vLLM's offline ``LLM`` engine in its own process.

Why a process of its own: vLLM's CPU build binds OpenMP threads and refuses
``torch.set_num_threads`` afterwards, and it spawns/initialises heavy state; the worker
must keep its event loop and its own torch settings untouched. The parent starts
``python -m pipeline.generator.vllm_backend --serve`` and talks to it over the child's
stdin/stdout (length-prefixed pickle frames of plain lists and numpy arrays). The child
runs the engine core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so there is exactly
one extra process; it exits when its stdin closes (the parent died or called close()).
``generate`` blocks the calling thread only — the worker calls it from its model executor
thread, never from the event loop.

What vLLM gets per user (DESIGN §4/§8): ``{"prompt_embeds": (L, hidden) fp32}`` (needs
``enable_prompt_embeds=True``), ``SamplingParams(temperature=0, max_tokens=min(k, |allowed|),
allowed_token_ids=allowed, logprobs=0, extra_args={"no_repeat": True})``, with the
model loaded from ``<model_dir>/generator`` with ``skip_tokenizer_init=True`` and
``dtype=float32``. No repeats come from :class:`pipeline.generator.vllm_logits.NoRepeatLogitsProcessor`,
passed by qualified name. Scores are the returned (raw) log-probs of the picked tokens.
On a CPU ``gpu_memory_utilization`` is irrelevant and the KV cache size comes from
``VLLM_CPU_KVCACHE_SPACE`` (GiB, default here 1); on CUDA it is lowered to 0.3 by default.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor

from pipeline.generator.base import Slate, check_request
from pipeline.generator.model import HF_DIR

__all__ = ["VLLMGenerator", "VLLMUnavailable", "vllm_installed"]

LOGITS_PROCESSOR = "pipeline.generator.vllm_logits:NoRepeatLogitsProcessor"
_HDR = struct.Struct("<Q")


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed, or its engine did not start (the message says why)."""


def vllm_installed() -> tuple[bool, str]:
    spec = importlib.util.find_spec("vllm")
    if spec is None:
        return False, "vllm is not installed (make setup-vllm)"
    return True, f"vllm found at {Path(spec.origin).parent}"


def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HDR.pack(len(data)))
    f.write(data)
    f.flush()


def _read_exact(f, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError("pipe closed")
        buf.extend(chunk)
    return bytes(buf)


def _recv(f):
    (n,) = _HDR.unpack(_read_exact(f, _HDR.size))
    return pickle.loads(_read_exact(f, n))


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model_dir: Path | str, vocab_size: int, max_model_len: int, device: str = "cpu",
                 startup_timeout_s: float = 300.0, request_timeout_s: float = 300.0, kv_cache_gib: int = 1,
                 gpu_memory_utilization: float | None = None, threads: int | None = None, seed: int = 0) -> None:
        ok, why = vllm_installed()
        if not ok:
            raise VLLMUnavailable(why)
        self.hf_dir = str(Path(model_dir) / HF_DIR)
        self.vocab_size = vocab_size
        self.request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._closed = False
        on_cuda = device.startswith("cuda")
        opts = {
            "model": self.hf_dir,
            "max_model_len": int(max_model_len),
            "gpu_memory_utilization": gpu_memory_utilization if gpu_memory_utilization is not None else (0.3 if on_cuda else 0.1),
            "seed": seed,
        }
        env = dict(os.environ)
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(kv_cache_gib))))  # whole GiB
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # idle engine threads sleep instead of spinning, so the worker's own threads get the cores back
        # between batches (on a 2-core box the default spin-wait slowed the next HSTU batch several-fold)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("KMP_BLOCKTIME", "0")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        if not on_cuda:
            env.setdefault("CUDA_VISIBLE_DEVICES", "")
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._log = tempfile.NamedTemporaryFile(prefix="streamrec-vllm-", suffix=".log", delete=False)
        self.log_path = self._log.name
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.generator.vllm_backend", "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=root,
        )
        try:
            try:
                _send(self._proc.stdin, opts)
            except (BrokenPipeError, OSError):
                pass  # the child died at once; _wait reports its exit code and log
            msg = self._wait(startup_timeout_s, "start")
        except BaseException:
            self._kill()
            raise
        if msg[0] != "ready":
            self._kill()
            raise VLLMUnavailable(f"vLLM engine failed to start: {msg[1]} (log: {self.log_path})")
        self.info = msg[1]

    # ------------------------------------------------------------ plumbing
    def _log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _wait(self, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        fd = self._proc.stdout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VLLMUnavailable(f"vLLM engine did not {what} within {timeout_s:.0f} s (log: {self.log_path})")
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                try:
                    return _recv(fd)
                except EOFError:
                    rc = self._proc.wait(timeout=10)
                    raise VLLMUnavailable(
                        f"vLLM engine process exited (rc={rc}) during {what}; last log lines:\n{self._log_tail()}"
                    ) from None
            if self._proc.poll() is not None:
                raise VLLMUnavailable(
                    f"vLLM engine process exited (rc={self._proc.returncode}) during {what}; last log lines:\n{self._log_tail()}"
                )

    def _kill(self) -> None:
        try:
            self._proc.kill()
            self._proc.wait(timeout=10)
        except Exception:
            pass

    # ------------------------------------------------------------ API
    def generate(self, prompt_embeds: Tensor, allowed: Sequence[Sequence[int]], k: int,
                 bias: Sequence[Sequence[float]] | None = None) -> list[Slate]:
        check_request(prompt_embeds, allowed, k, self.vocab_size, bias)
        pe = prompt_embeds.detach().float().cpu().contiguous().numpy()
        if bias is None:
            bias_maps = None
        else:
            bias_maps = [{int(t): float(x) for t, x in zip(row, brow)} for row, brow in zip(allowed, bias)]
        req = ("generate", pe, [[int(t) for t in dict.fromkeys(row)] for row in allowed], int(k), bias_maps)
        with self._lock:
            if self._closed:
                raise RuntimeError("vLLM generator is closed")
            try:
                _send(self._proc.stdin, req)
            except (BrokenPipeError, OSError):
                pass  # engine process gone; _wait raises with its exit code and log
            msg = self._wait(self.request_timeout_s, "answer")
        if msg[0] == "error":
            raise RuntimeError(f"vLLM generate failed: {msg[1]}")
        return msg[1]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except Exception:
                self._kill()
            try:
                self._log.close()
            except Exception:
                pass

    def __del__(self) -> None:  # best effort; close() is the API
        try:
            if not self._closed and self._proc.poll() is None:
                self._kill()
        except Exception:
            pass


# ------------------------------------------------------------ the child process
def _serve() -> int:
    # the protocol owns the real stdout; everything vLLM prints goes to stderr (the log file)
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    proto_in = sys.stdin.buffer
    try:
        opts = _recv(proto_in)
    except EOFError:
        return 0
    try:
        import torch
        from vllm import LLM, SamplingParams

        llm = LLM(
            model=opts["model"],
            skip_tokenizer_init=True,
            enable_prompt_embeds=True,
            dtype="float32",
            enforce_eager=True,
            max_model_len=opts["max_model_len"],
            gpu_memory_utilization=opts["gpu_memory_utilization"],
            seed=opts["seed"],
            logits_processors=[LOGITS_PROCESSOR],
        )
        hidden = llm.llm_engine.model_config.get_hidden_size()

        def run(pe: np.ndarray, allowed: list[list[int]], k: int, bias: list[dict] | None = None) -> list[Slate]:
            out: list[Slate] = [[] for _ in allowed]
            prompts, params, rows = [], [], []
            for b, row in enumerate(allowed):
                n = min(k, len(row))
                if n == 0:
                    continue  # no candidate: empty slate (vLLM would read [] as "no restriction")
                prompts.append({"prompt_embeds": torch.from_numpy(pe[b])})
                params.append(SamplingParams(temperature=0.0, max_tokens=n, logprobs=0,
                                             allowed_token_ids=row, extra_args={"no_repeat": True},
                                             logit_bias=None if bias is None else bias[b],
                                             detokenize=False, skip_special_tokens=False))
                rows.append(b)
            if prompts:
                results = llm.generate(prompts, params, use_tqdm=False)
                for b, res in zip(rows, results):
                    c = res.outputs[0]
                    out[b] = [(int(t), float(lp[t].logprob)) for t, lp in zip(c.token_ids, c.logprobs)]
            return out

        # warm up (the first call pays one-off costs) so the first real batch is fast
        run(np.zeros((1, 2, hidden), dtype=np.float32), [[0, 1]], 2)
        import vllm as _v

        _send(proto_out, ("ready", {"vllm": _v.__version__, "pid": os.getpid(), "threads": torch.get_num_threads()}))
    except BaseException as e:  # noqa: BLE001 - report any start failure to the parent
        import traceback

        traceback.print_exc()
        _send(proto_out, ("failed", f"{type(e).__name__}: {e}"))
        return 1
    while True:
        try:
            msg = _recv(proto_in)
        except EOFError:
            return 0
        try:
            _, pe, allowed, k, bias = msg
            _send(proto_out, ("ok", run(pe, allowed, k, bias)))
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            _send(proto_out, ("error", f"{type(e).__name__}: {e}"))


if __name__ == "__main__":
    if "--serve" in sys.argv[1:]:
        sys.exit(_serve())
    print("usage: python -m pipeline.generator.vllm_backend --serve  (started by VLLMGenerator)", file=sys.stderr)
    sys.exit(2)
