"""The generator model: a small decoder-only transformer in the standard Hugging Face
Llama architecture, written out in plain PyTorch so that the ``torch`` backend needs
neither ``transformers`` nor vLLM, and saved in the exact HF layout (``config.json`` +
``model.safetensors`` with HF tensor names) so that vLLM loads it natively as
``LlamaForCausalLM`` with ``skip_tokenizer_init=True``.

Vocabulary (token ids)::

    0 .. N-1   the items, same indices as the HSTU item vocabulary (items.txt)
    N          <pad>   left-pads the "recent items" part of short prompts
    N+1        <bos>   ends every prompt; the first slate item is predicted after it
    N+2        <unk>   an item the model's vocabulary does not know (OOV)
    N+3        <eos>   declared for HF compatibility; never generated (not allowed)

Prompt (``prompt_embeds``, fixed length ``L = P + R + 1``)::

    [ soft_1 .. soft_P ]  =  W_p · u  reshaped to (P, hidden)   u = HSTU user embedding
    [ e(r_1) .. e(r_R) ]  =  embed_tokens of the user's R most recent items (left-padded with <pad>)
    [ e(<bos>) ]

then the slate is decoded greedily, one item per step, each new item fed back as
its token embedding. Every prompt has the same length, so batches need no masks and
vLLM and the torch backend see identical positions (0 .. L+K-1).

The math is that of ``transformers.models.llama.modeling_llama`` (RMSNorm with the
weight applied after the fp32 normalisation, rotate-half RoPE with
``inv_freq = theta^(-2i/d)``, SiLU-gated MLP, no biases); a unit test checks the
logits against ``transformers.LlamaForCausalLM`` loaded from the saved directory
when ``transformers`` is installed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GeneratorConfig",
    "LlamaDecoder",
    "PromptEncoder",
    "GeneratorModel",
    "HF_DIR",
    "PROMPT_FILE",
    "META_FILE",
    "generator_files",
    "has_generator",
    "load_generator",
    "save_generator",
]

HF_DIR = "generator"  # <model_dir>/generator/{config.json, model.safetensors, generation_config.json}
META_FILE = "generator/streamrec_generator.json"  # our own settings (prompt layout, special ids)
PROMPT_FILE = "generator_prompt.safetensors"  # soft-prompt projection; OUTSIDE generator/ so vLLM never globs it
SPECIALS = ("<pad>", "<bos>", "<unk>", "<eos>")


@dataclass(frozen=True)
class GeneratorConfig:
    num_items: int
    hstu_dim: int
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 2
    soft_prompt_len: int = 4  # P
    recent_len: int = 12  # R
    max_slate: int = 64  # longest slate the position table allows
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # decoding adds retrieval_weight x (the candidate's retrieval score) to its logit: retrieval as a prior
    # the decoder corrects; 0 = the decoder alone. Chosen on validation by training (docs/generator.md).
    retrieval_weight: float = 0.0

    @property
    def pad_id(self) -> int:
        return self.num_items

    @property
    def bos_id(self) -> int:
        return self.num_items + 1

    @property
    def unk_id(self) -> int:
        return self.num_items + 2

    @property
    def eos_id(self) -> int:
        return self.num_items + 3

    @property
    def vocab_size(self) -> int:
        return self.num_items + len(SPECIALS)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def prompt_len(self) -> int:
        return self.soft_prompt_len + self.recent_len + 1

    @property
    def max_position_embeddings(self) -> int:
        return self.prompt_len + self.max_slate

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "retrieval_weight":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                    raise ValueError(f"GeneratorConfig.retrieval_weight must be a finite number >= 0, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"GeneratorConfig.{f.name} must be a positive number, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GeneratorConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def hf_config(self) -> dict:
        """``config.json`` of a standard ``LlamaForCausalLM`` (what vLLM and transformers read)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "initializer_range": 0.02,
            "pad_token_id": self.pad_id,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "torch_dtype": "float32",
            "use_cache": True,
        }


# ---------------------------------------------------------------- Llama math
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.h, self.kvh, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kvh * self.d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kvh * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: tuple[Tensor, Tensor] | None, start: int) -> Tensor:
        """x: (B, T, hidden); cos/sin: (T, d) for positions start..start+T-1.

        ``cache`` (k, v) of shape (B, kvh, S_max, d) is written at [start, start+T) and read at [0, start+T).
        Without a cache: plain causal attention over the T positions (training)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kvh, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.d).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            kc, vc = cache
            kc[:, :, start : start + T] = k
            vc[:, :, start : start + T] = v
            k, v = kc[:, :, : start + T], vc[:, :, : start + T]
        if self.kvh != self.h:
            k = k.repeat_interleave(self.h // self.kvh, dim=1)
            v = v.repeat_interleave(self.h // self.kvh, dim=1)
        if T == 1:
            out = F.scaled_dot_product_attention(q, k, v)  # one new query sees the whole cache
        elif start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # T new queries after `start` cached positions
            S = start + T
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=start)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, start):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):
    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaDecoder(nn.Module):
    """``LlamaForCausalLM`` with HF parameter names (``model.*``, ``lm_head``), fed with input embeddings."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
        pos = torch.arange(cfg.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def embed(self, token_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(token_ids)

    def forward(self, inputs_embeds: Tensor, cache: list[tuple[Tensor, Tensor]] | None = None, start: int = 0,
                last_only: bool = False, last_n: int | None = None) -> Tensor:
        """Logits (B, T, V) for positions start..start+T-1 — or (B, V) with ``last_only``, or the last
        ``last_n`` positions (B, last_n, V)."""
        T = inputs_embeds.shape[1]
        if start + T > self.cfg.max_position_embeddings:
            raise ValueError(f"position {start + T} exceeds max_position_embeddings={self.cfg.max_position_embeddings}")
        cos = self.rope_cos[start : start + T].to(inputs_embeds.dtype)
        sin = self.rope_sin[start : start + T].to(inputs_embeds.dtype)
        x = inputs_embeds
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None if cache is None else cache[i], start)
        if last_only:
            x = x[:, -1]
        elif last_n is not None:
            x = x[:, -last_n:]
        return self.lm_head(self.model.norm(x))

    def new_cache(self, batch: int, length: int, dtype=torch.float32, device=None) -> list[tuple[Tensor, Tensor]]:
        c = self.cfg
        shape = (batch, c.num_key_value_heads, length, c.head_dim)
        return [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                for _ in range(c.num_hidden_layers)]


class PromptEncoder(nn.Module):
    """HSTU user embedding -> P soft-prompt vectors (one linear projection)."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.hstu_dim, cfg.soft_prompt_len * cfg.hidden_size)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, user_emb: Tensor) -> Tensor:
        return self.proj(user_emb).view(user_emb.shape[0], self.cfg.soft_prompt_len, self.cfg.hidden_size)


class GeneratorModel(nn.Module):
    """Prompt encoder + decoder; builds ``prompt_embeds`` and trains end to end."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.prompt = PromptEncoder(cfg)
        self.decoder = LlamaDecoder(cfg)

    def recent_tokens(self, histories: list[list[int]]) -> Tensor:
        """(B, R) token ids of each user's R most recent items, left-padded with <pad>.

        ``histories`` hold item indices; anything outside 0..N-1 (e.g. HSTU's OOV index) becomes <unk>."""
        c = self.cfg
        out = torch.full((len(histories), c.recent_len), c.pad_id, dtype=torch.long)
        for b, h in enumerate(histories):
            h = h[-c.recent_len :]
            if h:
                t = torch.tensor(h, dtype=torch.long)
                t = torch.where((t >= 0) & (t < c.num_items), t, torch.full_like(t, c.unk_id))
                out[b, c.recent_len - len(h) :] = t
        return out

    def prompt_embeds(self, user_emb: Tensor, recent: Tensor) -> Tensor:
        """(B, L, hidden) = [soft prompt (P), recent item embeddings (R), <bos>]."""
        B = user_emb.shape[0]
        bos = torch.full((B, 1), self.cfg.bos_id, dtype=torch.long, device=recent.device)
        return torch.cat([self.prompt(user_emb), self.decoder.embed(torch.cat([recent, bos], dim=1))], dim=1)


# ---------------------------------------------------------------- files
def generator_files() -> list[str]:
    return [f"{HF_DIR}/config.json", f"{HF_DIR}/model.safetensors", f"{HF_DIR}/generation_config.json", META_FILE, PROMPT_FILE]


def has_generator(model_dir: Path | str) -> bool:
    p = Path(model_dir)
    return all((p / f).is_file() for f in generator_files())


def save_generator(model_dir: Path | str, model: GeneratorModel, metrics: dict | None = None) -> str:
    """Write the generator into ``model_dir`` and list its files in the manifest (sha256).

    Returns the generator version ``gen-<12 hex of the weights' sha256>``. The model directory
    must already hold a verified HSTU model (``save_model_dir``)."""
    import datetime as _dt
    import os

    from safetensors.torch import save_file

    from pipeline.model_dir import MANIFEST, sha256_file

    p = Path(model_dir)
    manifest_path = p / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    (p / HF_DIR).mkdir(parents=True, exist_ok=True)
    c = model.cfg
    (p / HF_DIR / "config.json").write_text(json.dumps(c.hf_config(), indent=2, sort_keys=True) + "\n")
    (p / HF_DIR / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": c.bos_id, "eos_token_id": c.eos_id, "pad_token_id": c.pad_id, "do_sample": False}, indent=2) + "\n")
    dec = {k: v.detach().cpu().float().contiguous() for k, v in model.decoder.state_dict().items()}
    save_file(dec, str(p / HF_DIR / "model.safetensors"), metadata={"format": "pt"})
    save_file({k: v.detach().cpu().float().contiguous() for k, v in model.prompt.state_dict().items()}, str(p / PROMPT_FILE))
    meta = {"config": c.to_dict(), "specials": {s: c.num_items + i for i, s in enumerate(SPECIALS)},
            "metrics": metrics or {}, "hstu_version": manifest.get("version")}
    (p / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    files = dict(manifest.get("files", {}))
    for f in generator_files():
        files[f] = sha256_file(p / f)
    version = "gen-" + files[f"{HF_DIR}/model.safetensors"][:12]
    manifest["files"] = files
    manifest["generator"] = {
        "version": version, "arch": "LlamaForCausalLM",
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    tmp = p / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest_path)
    return version


def load_generator(model_dir: Path | str) -> GeneratorModel:
    """Load the generator of a model directory. Call it on a directory that ``load_model_dir`` verified
    (that checks every listed file's sha256); this checks the generator is listed and consistent."""
    from safetensors.torch import load_file

    from pipeline.model_dir import MANIFEST, ModelDirError

    p = Path(model_dir)
    if not has_generator(p):
        raise ModelDirError(f"{p} has no generator ({', '.join(generator_files())}); run `streamrec train` to add one")
    manifest = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
    missing = [f for f in generator_files() if f not in manifest.get("files", {})]
    if missing:
        raise ModelDirError(f"{p}/{MANIFEST} does not list the generator files {missing}: the directory does not verify")
    try:
        meta = json.loads((p / META_FILE).read_text(encoding="utf-8"))
        cfg = GeneratorConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelDirError(f"{p / META_FILE}: invalid generator config ({e})") from None
    model = GeneratorModel(cfg)
    try:
        model.decoder.load_state_dict(load_file(str(p / HF_DIR / "model.safetensors")))
        model.prompt.load_state_dict(load_file(str(p / PROMPT_FILE)))
    except RuntimeError as e:
        raise ModelDirError(f"{p}: generator weights do not match its config ({e})") from None
    return model.eval()
