"""The parameter calculator: parameters, FLOPs and activation memory of an encoder config.

Works from the config alone (HSTUConfig or SASRecConfig); ``streamrec model-info DIR``
prints it for a model directory and checks the parameter total against the weights.

Conventions (docs/model.md, "model-info"):

* FLOPs count matrix products only, 2 FLOPs per multiply-add. LayerNorm, SiLU/ReLU,
  softmax, the rab lookup, dropout and the embedding lookups are element-wise or
  gathers, O(L * d), and are left out.
* HSTU, per layer and per event: projections ``2 d H (2 dv + 2 dqk)`` (one fused
  U,V,Q,K projection) + ``2 H dv d`` (output); attention of an event that sees ``j``
  events (itself included) ``2 H j (dqk + dv)`` (Q.K and A.V).
* SASRec, per layer and per event: ``2 d d`` (Q) + ``2 d 2d`` (K, V) + ``2 d d``
  (output) + ``2 * 2 d f`` (two FFN layers, f = ffn_dim); attention ``2 * 2 j d``.
* Per NEW event (incremental encode with the previous events' K/V cached, history
  length L including the new event): 1 x projections + attention with j = L.
* Per FULL sequence of length L (re-encode from scratch, causal): L x projections +
  attention summed over j = 1..L = L(L+1)/2 query-key pairs. (The padded dense op
  computes all L^2 pairs and masks half: ``attention_dense`` reports that.)
* Output (retrieval): scoring one user embedding against all items, ``2 d N``;
  listed separately and added once to each total.
* Activation memory, float32, for a dense batch (B, L): per layer, the per-event
  tensors (listed in ``per_event_tensors``) times B L, plus ``2 B H L^2`` for the
  attention maps (the scores and the attention weights). ``inference_peak`` = one
  layer live at a time + the input; ``training_saved`` = all layers kept for the
  backward pass + the input. An estimate: allocator overhead, dropout masks and
  temporaries of element-wise ops are not counted.
"""
from __future__ import annotations

from typing import Any

__all__ = ["arch_of", "parameter_breakdown", "flops", "activation_memory", "model_info"]

BYTES_FP32 = 4


def arch_of(cfg: Any) -> str:
    return "sasrec" if hasattr(cfg, "ffn_dim") else "hstu"


def parameter_breakdown(cfg: Any) -> dict:
    """Parameters per component (analytic, from the config)."""
    d, N, A = cfg.dim, cfg.num_items, cfg.num_actions
    comp: dict[str, int] = {"item_embedding": (N + 1) * d, "action_embedding": A * d}
    if arch_of(cfg) == "hstu":
        H, dqk, dv = cfg.num_heads, cfg.qk_dim, cfg.v_dim
        w = H * (2 * dv + 2 * dqk)
        layer = {
            "layer_norm": 2 * d,
            "uvqk_projection": d * w + w,
            "rab": cfg.max_seq_len + cfg.num_time_buckets,
            "output_projection": H * dv * d + d,
        }
    else:
        f = cfg.ffn_dim
        comp["position_embedding"] = cfg.max_seq_len * d
        layer = {
            "layer_norms": 4 * d,
            "qkv_projection": 3 * d * d + 3 * d,
            "output_projection": d * d + d,
            "ffn": d * f + f + f * d + d,
        }
    comp["layers"] = cfg.num_layers * sum(layer.values())
    comp["final_norm"] = 2 * d
    return {"components": comp, "per_layer": layer, "num_layers": cfg.num_layers, "total": sum(comp.values())}


def _per_token_proj(cfg: Any) -> int:
    d = cfg.dim
    if arch_of(cfg) == "hstu":
        H = cfg.num_heads
        return 2 * d * H * (2 * cfg.v_dim + 2 * cfg.qk_dim) + 2 * H * cfg.v_dim * d
    f = cfg.ffn_dim
    return 2 * d * d + 2 * d * 2 * d + 2 * d * d + 2 * 2 * d * f


def _attn_per_pair(cfg: Any) -> int:
    if arch_of(cfg) == "hstu":
        return 2 * cfg.num_heads * (cfg.qk_dim + cfg.v_dim)
    return 2 * 2 * cfg.dim


def flops(cfg: Any, L: int) -> dict:
    """Matmul FLOPs (2 per multiply-add) for a new event and for a full sequence of length L."""
    nl = cfg.num_layers
    proj, pair = _per_token_proj(cfg), _attn_per_pair(cfg)
    output = 2 * cfg.dim * cfg.num_items
    new_event = {"projections": nl * proj, "attention": nl * pair * L}
    new_event["encoder"] = new_event["projections"] + new_event["attention"]
    pairs = L * (L + 1) // 2
    full = {"projections": nl * proj * L, "attention": nl * pair * pairs, "attention_dense": nl * pair * L * L}
    full["encoder"] = full["projections"] + full["attention"]
    return {
        "seq_len": L,
        "per_new_event": {**new_event, "output": output, "total": new_event["encoder"] + output},
        "per_full_sequence": {**full, "output": output, "total": full["encoder"] + output},
    }


def _per_event_tensors(cfg: Any) -> dict:
    d = cfg.dim
    if arch_of(cfg) == "hstu":
        H, dqk, dv = cfg.num_heads, cfg.qk_dim, cfg.v_dim
        return {"x": d, "layer_norm(x)": d, "uvqk": H * (2 * dv + 2 * dqk), "AV": H * dv,
                "U*LayerNorm(AV)": H * dv, "output": d}
    f = cfg.ffn_dim
    return {"x": d, "layer_norm(x)": d, "q": d, "kv": 2 * d, "attention_out": d, "output": d,
            "ffn_norm": d, "ffn_hidden": f, "relu": f, "ffn_out": d}


def activation_memory(cfg: Any, B: int, L: int) -> dict:
    """Activation bytes (float32) for a dense batch of B sequences of length L."""
    tensors = _per_event_tensors(cfg)
    per_event = sum(tensors.values())
    per_layer = B * L * per_event + 2 * B * cfg.num_heads * L * L
    inp = B * L * cfg.dim
    return {
        "batch": B,
        "seq_len": L,
        "per_event_tensors": tensors,
        "per_layer_elements": per_layer,
        "inference_peak_bytes": BYTES_FP32 * (per_layer + inp),
        "training_saved_bytes": BYTES_FP32 * (cfg.num_layers * per_layer + inp),
    }


def model_info(cfg: Any, seq_len: int | None = None, batch: int = 64) -> dict:
    L = seq_len or cfg.max_seq_len
    return {
        "arch": arch_of(cfg),
        "config": cfg.to_dict(),
        "parameters": parameter_breakdown(cfg),
        "flops": flops(cfg, L),
        "activation_memory": activation_memory(cfg, batch, L),
    }
