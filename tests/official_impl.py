"""An independent, deliberately naive re-statement of the official VideoMAE V2 computation.

Written from the official code's description (boolean indexing, Conv3d on every token, explicit
softmax attention, targets for the whole video then selected): the truth our optimised model
is compared against at shapes the fixtures do not cover. Test-only; float64.
"""
import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)


def numpy_sinusoid(n, d):
    def angles(pos):
        return [pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)]
    table = np.array([angles(p) for p in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


def block(sd, prefix, x, heads, eps):
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"], eps)
    B, N, C = x.shape
    h = ln(x, "norm1")
    bias = torch.cat([sd[f"{prefix}attn.q_bias"], torch.zeros_like(sd[f"{prefix}attn.v_bias"]),
                      sd[f"{prefix}attn.v_bias"]])
    qkv = F.linear(h, sd[f"{prefix}attn.qkv.weight"], bias).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // heads) ** -0.5
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(B, N, C)
    x = x + F.linear(o, sd[f"{prefix}attn.proj.weight"], sd[f"{prefix}attn.proj.bias"])
    h = ln(x, "norm2")
    h = F.gelu(F.linear(h, sd[f"{prefix}mlp.fc1.weight"], sd[f"{prefix}mlp.fc1.bias"]))
    return x + F.linear(h, sd[f"{prefix}mlp.fc2.weight"], sd[f"{prefix}mlp.fc2.bias"])


def pretrain_forward_loss(sd, cfg, video, mask, decode_mask):
    """Official forward + engine loss; masks are (B, N) bool, True = masked."""
    p, t, eps = cfg["patch_size"], cfg["tubelet_size"], cfg.get("layer_norm_eps", 1e-6)
    B = video.shape[0]
    w = sd["encoder.patch_embed.proj.weight"]
    tok = F.conv3d(video, w, sd["encoder.patch_embed.proj.bias"], stride=(t, p, p)).flatten(2).transpose(1, 2)
    N, Ce = tok.shape[1], tok.shape[2]
    tok = tok + numpy_sinusoid(N, Ce).type_as(tok)
    x = tok[~mask].reshape(B, -1, Ce)
    for i in range(cfg["encoder_depth"]):
        x = block(sd, f"encoder.blocks.{i}.", x, cfg["encoder_num_heads"], eps)
    x = F.layer_norm(x, (Ce,), sd["encoder.norm.weight"], sd["encoder.norm.bias"], eps)
    z = F.linear(x, sd["encoder_to_decoder.weight"])
    Cd = z.shape[-1]
    pe = numpy_sinusoid(N, Cd).expand(B, -1, -1).type_as(z)
    pe_v = pe[~mask].reshape(B, -1, Cd)
    pe_m = pe[~decode_mask].reshape(B, -1, Cd)
    seq = torch.cat([z + pe_v, sd["mask_token"] + pe_m], dim=1)
    for i in range(cfg["decoder_depth"]):
        seq = block(sd, f"decoder.blocks.{i}.", seq, cfg["decoder_num_heads"], eps)
    h = seq[:, -pe_m.shape[1]:]
    h = F.layer_norm(h, (Cd,), sd["decoder.norm.weight"], sd["decoder.norm.bias"], eps)
    out = F.linear(h, sd["decoder.head.weight"], sd["decoder.head.bias"])
    # engine: targets for the whole video, then select
    with torch.no_grad():
        un = video * STD.view(1, 3, 1, 1, 1).type_as(video) + MEAN.view(1, 3, 1, 1, 1).type_as(video)
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
