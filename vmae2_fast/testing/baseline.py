"""An independent re-statement of the official VideoMAE V2 computation, op for op.

Written from the description of the official code (boolean-mask indexing, Conv3d on every token,
explicit softmax attention, host-side position tables copied to the device every step, targets
for the whole video then selected, masks made with NumPy on the host). It never touches
`vmae2_fast.ops` or `models/`, so it serves two purposes:

- the tests' independent truth at shapes the golden fixtures do not cover;
- the baseline of `bench/throughput.py` when no official checkout is given: it runs on the
  parameters of one of our models (`dict(model.named_parameters())`), so both are timed on the
  same weights and data. For that its operations, dtypes and order are the official ones, and it
  must cost what the official code costs: `bench/throughput.py --official-repo PATH` times both
  side by side and reports the ratio (`restatement_over_official`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)


def numpy_sinusoid(n, d):
    """The official table: built with Python loops in float64, returned as float32 (1, n, d)."""
    def angles(pos):
        return [pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)]
    table = np.array([angles(p) for p in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


def numpy_masks(batch, grid, mask_ratio, decoder_mask_ratio, rng: np.random.Generator):
    """Official-style masks made on the host: (B, N) bool maps, True = masked."""
    t, h, w = grid
    hw = h * w
    n_mask = int(mask_ratio * hw)
    enc = []
    for _ in range(batch):
        row = np.hstack([np.zeros(hw - n_mask), np.ones(n_mask)])
        rng.shuffle(row)
        enc.append(np.tile(row, (t, 1)).flatten())
    enc = np.stack(enc).astype(bool)
    if decoder_mask_ratio <= 0:
        return torch.from_numpy(enc), torch.from_numpy(~enc)
    k = int(4 * decoder_mask_ratio)
    queue = np.array([1] * k + [0] * (4 - k))
    maps = []
    for start in range(4):
        frames = []
        for slot in range(t):
            cell = queue[(np.arange(4) + start + slot + 1) % 4].reshape(2, 2)
            frames.append(np.tile(cell, (h // 2, w // 2)).flatten())
        maps.append(np.concatenate(frames))
    maps = np.stack(maps).astype(bool)
    dec = maps[rng.integers(0, 4, size=batch)]
    return torch.from_numpy(enc), torch.from_numpy(dec)


def block(sd, prefix, x, heads, eps, qk_scale=None):
    """One official Block. The official options are read off the weights, as the official modules
    hold them: ``attn.scale`` makes it a CosAttention (normalised q and k, their product times
    exp(min(scale, 4.6052))), ``gamma_1``/``gamma_2`` the layer scale; ``qk_scale`` replaces
    head_dim ** -0.5 in the plain attention."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"], eps)
    B, N, C = x.shape
    h = ln(x, "norm1")
    bias = torch.cat([sd[f"{prefix}attn.q_bias"], torch.zeros_like(sd[f"{prefix}attn.v_bias"]),
                      sd[f"{prefix}attn.v_bias"]])
    qkv = F.linear(h, sd[f"{prefix}attn.qkv.weight"], bias).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logit_scale = sd.get(f"{prefix}attn.scale")
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=4.6052).exp()
    else:
        q = q * (qk_scale or (C // heads) ** -0.5)
        attn = q @ k.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(B, N, C)
    o = F.linear(o, sd[f"{prefix}attn.proj.weight"], sd[f"{prefix}attn.proj.bias"])
    g1, g2 = sd.get(f"{prefix}gamma_1"), sd.get(f"{prefix}gamma_2")
    x = x + (o if g1 is None else g1 * o)
    h = ln(x, "norm2")
    h = F.gelu(F.linear(h, sd[f"{prefix}mlp.fc1.weight"], sd[f"{prefix}mlp.fc1.bias"]))
    h = F.linear(h, sd[f"{prefix}mlp.fc2.weight"], sd[f"{prefix}mlp.fc2.bias"])
    return x + (h if g2 is None else g2 * h)


def classifier_forward(sd, cfg, video):
    """The official classifier (VisionTransformer.forward, eval mode) from a state dict: learned
    ``pos_embed`` when the weights hold one, else the numpy sinusoid; mean pooling + fc_norm, or
    (``use_mean_pooling`` False) ``norm`` of the first token."""
    p, t, eps = cfg["patch_size"], cfg["tubelet_size"], cfg.get("layer_norm_eps", 1e-6)
    x = F.conv3d(video, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=(t, p, p)).flatten(2).transpose(1, 2)
    table = sd.get("pos_embed")
    if table is None:
        table = numpy_sinusoid(x.shape[1], x.shape[2])
    x = x + table.expand(x.shape[0], -1, -1).type_as(x).to(x.device)
    for i in range(cfg["depth"]):
        x = block(sd, f"blocks.{i}.", x, cfg["num_heads"], eps, cfg.get("qk_scale"))
    if cfg.get("use_mean_pooling", True):
        feat = F.layer_norm(x.mean(1), x.shape[-1:], sd["fc_norm.weight"], sd["fc_norm.bias"], eps)
    else:
        feat = F.layer_norm(x[:, 0], x.shape[-1:], sd["norm.weight"], sd["norm.bias"], eps)
    return F.linear(feat, sd["head.weight"], sd["head.bias"])


def cached_sinusoid(tables: dict, n: int, d: int) -> torch.Tensor:
    """The (1, n, d) host table from `tables`, built on first use. (Not `tables.setdefault(key,
    numpy_sinusoid(...))`: that evaluates the default every call and rebuilt both tables with
    Python loops each step, ~0.7 s at ViT-S 16x224^2, which made this re-statement cost ~1.7x
    what the official code costs.)"""
    if (n, d) not in tables:
        tables[(n, d)] = numpy_sinusoid(n, d)
    return tables[(n, d)]


def pretrain_forward_loss(sd, cfg, video, mask, decode_mask, tables=None):
    """Official forward + engine loss; masks are (B, N) bool, True = masked.

    `tables` may hold the host-side position tables (key (N, C)) so a benchmark builds them
    once, as the official model does at construction; they are still copied every call. The
    operations, their dtypes and their order are the official ones, so that a benchmark that
    times this function times what the official code costs.
    """
    p, t, eps = cfg["patch_size"], cfg["tubelet_size"], cfg.get("layer_norm_eps", 1e-6)
    tables = {} if tables is None else tables
    B = video.shape[0]
    mask, decode_mask = mask.to(video.device), decode_mask.to(video.device)
    w = sd["encoder.patch_embed.proj.weight"]
    tok = F.conv3d(video, w, sd["encoder.patch_embed.proj.bias"], stride=(t, p, p)).flatten(2).transpose(1, 2)
    N, Ce = tok.shape[1], tok.shape[2]
    if "encoder.pos_embed" in sd:      # a learned table (1, N, C), trained with the model
        tok = tok + sd["encoder.pos_embed"]
    else:
        tok = tok + cached_sinusoid(tables, N, Ce).type_as(tok).to(tok.device).clone().detach()
    x = tok[~mask].reshape(B, -1, Ce)
    qk_scale = cfg.get("qk_scale")
    for i in range(cfg["encoder_depth"]):
        x = block(sd, f"encoder.blocks.{i}.", x, cfg["encoder_num_heads"], eps, qk_scale)
    x = F.layer_norm(x, (Ce,), sd["encoder.norm.weight"], sd["encoder.norm.bias"], eps)
    z = F.linear(x, sd["encoder_to_decoder.weight"])
    Cd = z.shape[-1]
    # official: cast to the dtype of the model's INPUT video (fp32 under autocast), not of z
    pe = cached_sinusoid(tables, N, Cd).expand(B, -1, -1).type_as(video).to(z.device).clone().detach()
    pe_v = pe[~mask].reshape(B, -1, Cd)
    pe_m = pe[~decode_mask].reshape(B, -1, Cd)
    seq = torch.cat([z + pe_v, sd["mask_token"] + pe_m], dim=1)
    for i in range(cfg["decoder_depth"]):
        seq = block(sd, f"decoder.blocks.{i}.", seq, cfg["decoder_num_heads"], eps, qk_scale)
    h = seq[:, -pe_m.shape[1]:]
    h = F.layer_norm(h, (Cd,), sd["decoder.norm.weight"], sd["decoder.norm.bias"], eps)
    out = F.linear(h, sd["decoder.head.weight"], sd["decoder.head.bias"])
    # engine: targets for the whole video (in float32 at least), then select
    with torch.no_grad():
        dtype = torch.promote_types(video.dtype, torch.float32)
        un = video.to(dtype) * STD.view(1, 3, 1, 1, 1).to(video.device, dtype) \
            + MEAN.view(1, 3, 1, 1, 1).to(video.device, dtype)
        _, C, T, H, W = un.shape
        sq = un.reshape(B, C, T // t, t, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        sq = sq.reshape(B, N, t * p * p, C)
        sq = (sq - sq.mean(dim=-2, keepdim=True)) / (sq.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        tgt = sq.reshape(B, N, -1)
        labels = tgt[~decode_mask].reshape(B, -1, tgt.shape[-1])
    per_token = ((out - labels) ** 2).mean(dim=-1)
    weight = mask[~decode_mask].reshape(B, -1)
    loss = (per_token * weight).sum() / weight.sum()
    return loss, out, labels
