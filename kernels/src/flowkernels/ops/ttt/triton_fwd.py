"""Triton forward of TTT attention (kernels.md §3.3–3.4): key statistics, split-N update, apply.

Import this module only after deciding about ``TRITON_INTERPRET`` (``@triton.jit`` reads it when the
kernels below are decorated); ``function.py`` imports it lazily for that reason.

Work tables (int32 [n_ranges, 8], built on the host, one row per program along grid axis 1):
``start, end, seg_start, h, w, is_image, stats_set, 0``. A range never straddles a segment border, so a
program knows the (h, w) grid of every row it touches and the 3×3 halo can be gathered on the fly. Text
ranges carry h = 0 (and w = 1): the kernels test ``row < h`` rather than a scalar flag, so no mask mixes
a scalar with a block (the interpreter rejects such masks).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..._backend import autotune_configs, device_sm_count, is_interpreting
from ..._segments import Segment, ceil_div, round_up, split_rows, stats_layout, stats_set_of

INTERPRETED_AT_IMPORT = is_interpreting()
ROW_ALIGN = 16  # range borders from n_split are rounded to this many rows (the smallest BLOCK_N)
STATS_ROWS_PER_PROGRAM = 512
APPLY_ROWS_CUDA = 256
APPLY_ROWS_OTHER = 64
NOMINAL_BLOCK_N = 64  # used only by the n_split heuristic


# ----------------------------------------------------------------------------------------------------------
# Shared device helpers
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(ptrs, mask, mean, rstd, NORMALIZE: tl.constexpr):
    """[BLOCK_N, D] fp32 tile; normalised first, then zeroed where ``mask`` ([BLOCK_N, 1]) is off."""
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if NORMALIZE:
        x = tl.where(mask, (x - mean[None, :]) * rstd[None, :], 0.0)
    return x


@triton.jit
def _conv_taps(
    tile_ptrs, rows, row_mask, seg_start, h, w, stride_n, mean, rstd, cw_ptr, cb_ptr, chan_offs,
    BLOCK_N: tl.constexpr, D: tl.constexpr, NORMALIZE: tl.constexpr,
):  # fmt: skip
    """bias + Σ_taps w[tap, c]·x̂(r + dr, x + dx) for the [BLOCK_N, D] tile at ``tile_ptrs``, fp32.

    Rows of text ranges (h = 0) get 0. Each neighbour is normalised *before* masking, so out-of-grid taps
    contribute exactly 0 (the reference zero-pads the normalised tensor). cw: [C, 9] fp32, tap = 3·dr + dx.
    """
    local = rows - seg_start
    r = local // w
    x = local - r * w
    inside = row_mask & (r < h)
    up_ok = inside & (r > 0)
    down_ok = inside & (r + 1 < h)
    left_ok = x > 0
    right_ok = x + 1 < w
    acc = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    for dr in tl.static_range(3):
        if dr == 0:
            row_ok = up_ok
        elif dr == 1:
            row_ok = inside
        else:
            row_ok = down_ok
        for dx in tl.static_range(3):
            if dx == 0:
                valid = row_ok & left_ok
            elif dx == 1:
                valid = row_ok
            else:
                valid = row_ok & right_ok
            shift = (dr - 1) * w + (dx - 1)
            tap = _load_tile(tile_ptrs + shift * stride_n, valid[:, None], mean, rstd, NORMALIZE)
            weight = tl.load(cw_ptr + chan_offs * 9 + (dr * 3 + dx))
            acc += tap * weight[None, :]
    bias = tl.load(cb_ptr + chan_offs)
    return tl.where(inside[:, None], acc + bias[None, :], 0.0)


@triton.jit
def _load_square(ptr, offs_d, D: tl.constexpr):
    """A row-major fp32 [D, D] matrix."""
    return tl.load(ptr + offs_d[:, None] * D + offs_d[None, :])


# ----------------------------------------------------------------------------------------------------------
# Stage 1: key statistics partials
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _kstats_kernel(
    k_ptr, table_ptr, part_ptr, C, n_ranges,
    stride_b, stride_n, stride_h, stride_d,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grid (B, ⌈C/BLOCK_C⌉, n_ranges): mean and M2 of k over one row range, two passes within the range.

    part: [B, n_ranges, 2, C] fp32 (mean, M2).
    """
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_r = tl.program_id(2)
    start = tl.load(table_ptr + pid_r * 8 + 0)
    end = tl.load(table_ptr + pid_r * 8 + 1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    col = (offs_c // D) * stride_h + (offs_c % D) * stride_d
    base = k_ptr + pid_b.to(tl.int64) * stride_b
    offs_n = tl.arange(0, BLOCK_N)

    total = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_N):
        rows = t0 + offs_n
        mask = (rows < end)[:, None] & cmask[None, :]
        x = tl.load(base + rows[:, None].to(tl.int64) * stride_n + col[None, :], mask=mask, other=0.0)
        total += x.to(tl.float32)
    count = (end - start).to(tl.float32)
    mean = tl.sum(total, axis=0) / count

    sq = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_N):
        rows = t0 + offs_n
        mask = (rows < end)[:, None] & cmask[None, :]
        x = tl.load(base + rows[:, None].to(tl.int64) * stride_n + col[None, :], mask=mask, other=0.0)
        dev = tl.where(mask, x.to(tl.float32) - mean[None, :], 0.0)
        sq += dev * dev
    m2 = tl.sum(sq, axis=0)

    out = part_ptr + (pid_b * n_ranges + pid_r).to(tl.int64) * 2 * C
    tl.store(out + offs_c, mean, mask=cmask)
    tl.store(out + C + offs_c, m2, mask=cmask)


@triton.jit
def _kstats_merge_kernel(
    part_ptr, table_ptr, slices_ptr, mean_ptr, rstd_ptr, C, n_ranges, n_sets, eps, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Grid (B, n_sets, ⌈C/BLOCK_C⌉): Chan's merge of the set's range partials, in fixed range order.

    slices: int32 [n_sets, 2] = first and one-past-last range of each set (ranges are sorted by set).
    mean, rstd: [B, n_sets, C] fp32, rstd = 1/sqrt(M2/n + eps).
    """
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_c = tl.program_id(2)
    r0 = tl.load(slices_ptr + pid_s * 2)
    r1 = tl.load(slices_ptr + pid_s * 2 + 1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    base = part_ptr + pid_b.to(tl.int64) * n_ranges * 2 * C
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    weighted = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r in range(r0, r1):
        n_r = (tl.load(table_ptr + r * 8 + 1) - tl.load(table_ptr + r * 8)).to(tl.float32)
        mean_r = tl.load(base + r * 2 * C + offs_c, mask=cmask, other=0.0)
        total += n_r
        weighted += n_r * mean_r
    mean = weighted / total
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r in range(r0, r1):
        n_r = (tl.load(table_ptr + r * 8 + 1) - tl.load(table_ptr + r * 8)).to(tl.float32)
        mean_r = tl.load(base + r * 2 * C + offs_c, mask=cmask, other=0.0)
        m2_r = tl.load(base + r * 2 * C + C + offs_c, mask=cmask, other=0.0)
        dev = mean_r - mean
        m2 += m2_r + n_r * dev * dev
    out = (pid_b * n_sets + pid_s).to(tl.int64) * C + offs_c
    tl.store(mean_ptr + out, mean, mask=cmask)
    tl.store(rstd_ptr + out, 1.0 / tl.sqrt(m2 / total + eps), mask=cmask)


# ----------------------------------------------------------------------------------------------------------
# Stage 2: update pass (inner gradients, split over N)
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _ttt_update_kernel(
    k_ptr, v_ptr, w1_ptr, w2_ptr, mean_ptr, rstd_ptr, cw_ptr, cb_ptr, table_ptr, ws_ptr,
    H, C, n_sets, n_work,
    skb, skn, skh, skd, svb, svn, svh, svd,
    D: tl.constexpr, BLOCK_N: tl.constexpr, NORMALIZE: tl.constexpr, CONV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (B·H, n_work): unscaled inner gradients of one row range, written (never added) to the workspace.

    ws: [B·H, n_work, 2, D, D] fp32 holding K̃ᵀ[(R W2ᵀ) ⊙ SiLU'(Z)] and AᵀR with R = SiLU(K̃W1)W2 − V;
    the host sums over n_work in a fixed order and applies −η·s/N.
    """
    pid_bh = tl.program_id(0)
    pid_w = tl.program_id(1)
    b = pid_bh // H
    head = pid_bh % H
    row = table_ptr + pid_w * 8
    start = tl.load(row + 0)
    end = tl.load(row + 1)
    seg_start = tl.load(row + 2)
    h = tl.load(row + 3)
    w = tl.load(row + 4)
    stats_set = tl.load(row + 6)

    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    chan0 = head * D
    k_base = k_ptr + b.to(tl.int64) * skb + head * skh
    v_base = v_ptr + b.to(tl.int64) * svb + head * svh
    mean = tl.zeros([D], dtype=tl.float32)
    rstd = tl.full([D], 1.0, dtype=tl.float32)
    if NORMALIZE:
        stat_off = (b * n_sets + stats_set) * C + chan0
        mean = tl.load(mean_ptr + stat_off + offs_d)
        rstd = tl.load(rstd_ptr + stat_off + offs_d)

    op_dtype = k_ptr.dtype.element_ty
    w_off = head * D * D
    w1 = _load_square(w1_ptr + w_off, offs_d, D).to(op_dtype)
    w2 = _load_square(w2_ptr + w_off, offs_d, D).to(op_dtype)
    w2t = tl.trans(w2)  # a view of the same operand: less shared memory than a second load

    g1 = tl.zeros([D, D], dtype=tl.float32)
    g2 = tl.zeros([D, D], dtype=tl.float32)
    k_cols = offs_d * skd
    v_cols = offs_d * svd
    for t0 in range(start, end, BLOCK_N):
        rows = t0 + offs_n
        rmask = rows < end
        k_ptrs = k_base + rows[:, None].to(tl.int64) * skn + k_cols[None, :]
        kt = _load_tile(k_ptrs, rmask[:, None], mean, rstd, NORMALIZE)
        if CONV:
            kt += _conv_taps(
                k_ptrs, rows, rmask, seg_start, h, w, skn, mean, rstd, cw_ptr, cb_ptr, chan0 + offs_d,
                BLOCK_N, D, NORMALIZE,
            )  # fmt: skip
        v_ptrs = v_base + rows[:, None].to(tl.int64) * svn + v_cols[None, :]
        vt = _load_tile(v_ptrs, rmask[:, None], mean, rstd, False)
        k_op = kt.to(op_dtype)
        z = tl.dot(k_op, w1, input_precision=DOT_PRECISION)
        sig = tl.sigmoid(z)
        a_op = (z * sig).to(op_dtype)
        y = tl.dot(a_op, w2, input_precision=DOT_PRECISION)
        resid = tl.where(rmask[:, None], y - vt, 0.0)
        r_op = resid.to(op_dtype)
        p = tl.dot(r_op, w2t, input_precision=DOT_PRECISION) * (sig * (1.0 + z * (1.0 - sig)))
        g2 += tl.dot(tl.trans(a_op), r_op, input_precision=DOT_PRECISION)
        g1 += tl.dot(tl.trans(k_op), p.to(op_dtype), input_precision=DOT_PRECISION)

    out = ws_ptr + (pid_bh * n_work + pid_w).to(tl.int64) * 2 * D * D
    sq_offs = offs_d[:, None] * D + offs_d[None, :]
    tl.store(out + sq_offs, g1)
    tl.store(out + D * D + sq_offs, g2)


@triton.jit
def _ttt_reduce_kernel(ws_ptr, w1_ptr, w2_ptr, wp_ptr, H, n_work, factor, D: tl.constexpr, BLOCK_R: tl.constexpr):
    """Grid (B·H, D/BLOCK_R): W' = W − factor·Σ_ranges workspace, summed in fixed range order (deterministic).

    ws: [B·H, n_work, 2, D, D]; w1, w2: [H, D, D]; wp: [B, H, 2, D, D]; all fp32.
    """
    pid_bh = tl.program_id(0)
    pid_r = tl.program_id(1)
    head = pid_bh % H
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs = rows[:, None] * D + tl.arange(0, D)[None, :]
    g1 = tl.zeros([BLOCK_R, D], dtype=tl.float32)
    g2 = tl.zeros([BLOCK_R, D], dtype=tl.float32)
    base = ws_ptr + pid_bh.to(tl.int64) * n_work * 2 * D * D
    for i in range(n_work):
        g1 += tl.load(base + i * 2 * D * D + offs)
        g2 += tl.load(base + i * 2 * D * D + D * D + offs)
    w_off = head * D * D + offs
    out = wp_ptr + pid_bh.to(tl.int64) * 2 * D * D + offs
    tl.store(out, tl.load(w1_ptr + w_off) - factor * g1)
    tl.store(out + D * D, tl.load(w2_ptr + w_off) - factor * g2)


# ----------------------------------------------------------------------------------------------------------
# Stage 3: apply pass (read-out with the updated fast weights)
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _ttt_apply_kernel(
    q_ptr, wp_ptr, cw_ptr, cb_ptr, table_ptr, o_ptr,
    H, row0, sqb, sqn, sqh, sqd, sob, son,
    D: tl.constexpr, BLOCK_N: tl.constexpr, CONV: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Grid (B·H, n_work): o = SiLU(q̃ W1') W2' for one row range; stores columns h·D … h·D+D−1 of o.

    wp: [B, H, 2, D, D] fp32 updated weights; o: [B, N_out, C] with row i of o = sequence row row0 + i.
    """
    pid_bh = tl.program_id(0)
    pid_w = tl.program_id(1)
    b = pid_bh // H
    head = pid_bh % H
    row = table_ptr + pid_w * 8
    start = tl.load(row + 0)
    end = tl.load(row + 1)
    seg_start = tl.load(row + 2)
    h = tl.load(row + 3)
    w = tl.load(row + 4)

    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    chan0 = head * D
    q_base = q_ptr + b.to(tl.int64) * sqb + head * sqh
    unit = tl.full([D], 1.0, dtype=tl.float32)
    op_dtype = q_ptr.dtype.element_ty
    w_base = wp_ptr + pid_bh.to(tl.int64) * 2 * D * D
    w1 = _load_square(w_base, offs_d, D).to(op_dtype)
    w2 = _load_square(w_base + D * D, offs_d, D).to(op_dtype)
    o_base = o_ptr + b.to(tl.int64) * sob + chan0

    q_cols = offs_d * sqd
    for t0 in range(start, end, BLOCK_N):
        rows = t0 + offs_n
        rmask = rows < end
        q_ptrs = q_base + rows[:, None].to(tl.int64) * sqn + q_cols[None, :]
        qt = _load_tile(q_ptrs, rmask[:, None], unit, unit, False)
        if CONV:
            qt += _conv_taps(
                q_ptrs, rows, rmask, seg_start, h, w, sqn, unit, unit, cw_ptr, cb_ptr, chan0 + offs_d,
                BLOCK_N, D, False,
            )  # fmt: skip
        z = tl.dot(qt.to(op_dtype), w1, input_precision=DOT_PRECISION)
        a = z * tl.sigmoid(z)
        o = tl.dot(a.to(op_dtype), w2, input_precision=DOT_PRECISION)
        ptrs = o_base + (rows - row0)[:, None].to(tl.int64) * son + offs_d[None, :]
        tl.store(ptrs, o.to(o_ptr.dtype.element_ty), mask=rmask[:, None])


# ----------------------------------------------------------------------------------------------------------
# Launch configurations
# ----------------------------------------------------------------------------------------------------------

AUTOTUNE_ENV = "FLOWKERNELS_AUTOTUNE"


def _cfg(num_warps: int, num_stages: int, **meta: int) -> triton.Config:
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def _config_list(kind: str, head_dim: int, dtype: torch.dtype) -> list[triton.Config]:
    """Candidate launch configs, the default first. fp32 uses IEEE (FMA) dots whose operands live in shared
    memory, so it gets small tiles and no software pipelining (D = 128 then needs 160 KB on sm_90)."""
    if is_interpreting():
        return [_cfg(4, 1, BLOCK_N=16, BLOCK_C=32)] if kind == "stats" else [_cfg(4, 1, BLOCK_N=16)]
    if kind == "stats":
        return [_cfg(4, 2, BLOCK_N=64, BLOCK_C=64), _cfg(4, 2, BLOCK_N=32, BLOCK_C=128)]
    wide = head_dim == 128
    if dtype == torch.float32:
        return [_cfg(8 if wide else 4, 1, BLOCK_N=16)]
    # D = 128: the default (first, used alone when autotuning is off) is unpipelined. Triton 3.6 on an H200 asked
    # for 245 KB (> 227 KB) with 2 stages where Triton 3.9 compiles the same kernel in 115 KB; the autotuner skips
    # configs that run out of shared memory, a lone default cannot.
    if kind == "update":
        if wide:
            return [_cfg(8, 1, BLOCK_N=16), _cfg(8, 2, BLOCK_N=32), _cfg(8, 2, BLOCK_N=16), _cfg(8, 2, BLOCK_N=64)]
        return [_cfg(4, 2, BLOCK_N=64), _cfg(4, 2, BLOCK_N=32), _cfg(8, 2, BLOCK_N=64)]
    if wide:
        return [_cfg(8, 1, BLOCK_N=32), _cfg(8, 2, BLOCK_N=64), _cfg(8, 2, BLOCK_N=32)]
    return [_cfg(4, 2, BLOCK_N=64), _cfg(8, 2, BLOCK_N=128), _cfg(4, 2, BLOCK_N=128)]


def autotune_enabled() -> bool:
    """``FLOWKERNELS_AUTOTUNE=0`` launches the default config only (fast compiles for correctness checks)."""
    return os.environ.get(AUTOTUNE_ENV, "1") != "0"


_KERNELS: dict[tuple, triton.runtime.Autotuner] = {}


def launcher(kind: str, head_dim: int, dtype: torch.dtype):
    """The autotuned launcher of ``kind`` ("stats", "update", "apply") for this head dim and operand dtype."""
    configs = _config_list(kind, head_dim, dtype)
    if not autotune_enabled():
        configs = configs[:1]
    configs = autotune_configs(configs)
    key = (kind, head_dim, dtype, len(configs), is_interpreting())
    if key not in _KERNELS:
        fn, tune_key = {
            "stats": (_kstats_kernel, ["C", "D"]),
            "update": (_ttt_update_kernel, ["D", "NORMALIZE", "CONV", "DOT_PRECISION"]),
            "apply": (_ttt_apply_kernel, ["D", "CONV", "DOT_PRECISION"]),
        }[kind]
        _KERNELS[key] = triton.autotune(configs, key=tune_key)(fn)
    return _KERNELS[key]


# ----------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def work_table(
    segments: tuple[Segment, ...], lo: int, hi: int, piece_len: int | None, stats: str, device: torch.device
) -> Tensor:
    """int32 [n_ranges, 8] table of rows [lo, hi) (see module docstring); cached per layout and device."""
    rows = []
    for rng in split_rows(segments, lo, hi, piece_len):
        seg = segments[rng.segment] if rng.segment >= 0 else Segment(rng.start, 0, 1)  # h = 0: text
        stats_set = stats_set_of(rng.segment, len(segments), stats)
        rows.append([rng.start, rng.end, seg.start, seg.h, seg.w, int(rng.segment >= 0), stats_set, 0])
    return torch.tensor(rows, dtype=torch.int32).to(device)


def default_n_split(n_rows: int, batch_heads: int, device: torch.device) -> int:
    """≈ 4 waves of update programs, each with at least 4 tiles of NOMINAL_BLOCK_N rows (kernels.md §3.3)."""
    waves = ceil_div(4 * device_sm_count(device), max(batch_heads, 1))
    return max(1, min(waves, ceil_div(n_rows, 4 * NOMINAL_BLOCK_N)))


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """IEEE fp32 dots unless TF32 is allowed; low-precision operands use the backend default."""
    if dtype == torch.float32 and not allow_tf32:
        return "ieee"
    return "tf32"


@functools.lru_cache(maxsize=256)
def stats_table(
    segments: tuple[Segment, ...], n_rows: int, stats: str, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Work table of the statistics pass (ranges sorted by set) and each set's range slice, int32 [n_sets, 2]."""
    n_sets, _ = stats_layout(n_rows, segments, stats)
    n_seg = len(segments)
    ranges = sorted(
        split_rows(segments, 0, n_rows, STATS_ROWS_PER_PROGRAM),
        key=lambda r: (stats_set_of(r.segment, n_seg, stats), r.start),
    )
    sets = [stats_set_of(r.segment, n_seg, stats) for r in ranges]
    rows = [[r.start, r.end, 0, 0, 0, 0, s, 0] for r, s in zip(ranges, sets)]
    slices = [[sets.index(s), len(sets) - sets[::-1].index(s)] for s in range(n_sets)]
    table = torch.tensor(rows, dtype=torch.int32).to(device)
    return table, torch.tensor(slices, dtype=torch.int32).to(device)


def key_stats_triton(
    k: Tensor, segments: tuple[Segment, ...], *, stats: str, eps: float
) -> tuple[Tensor, Tensor]:
    """Triton key statistics. k: [B, N, H, D] (any strides). Returns mean, rstd [B, n_sets, C] fp32."""
    B, N, H, D = k.shape
    C = H * D
    table, slices = stats_table(segments, N, stats, k.device)
    n_ranges, n_sets = table.shape[0], slices.shape[0]
    partials = torch.empty(B, n_ranges, 2, C, device=k.device, dtype=torch.float32)

    def grid(meta):
        return (B, triton.cdiv(C, meta["BLOCK_C"]), n_ranges)

    launcher("stats", D, k.dtype)[grid](k, table, partials, C, n_ranges, *k.stride(), D=D)
    mean = torch.empty(B, n_sets, C, device=k.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_c = 128
    _kstats_merge_kernel[(B, n_sets, triton.cdiv(C, block_c))](
        partials, table, slices, mean, rstd, C, n_ranges, n_sets, float(eps), BLOCK_C=block_c
    )
    return mean, rstd


def ttt_forward_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    w1: Tensor,
    w2: Tensor,
    *,
    segments: tuple[Segment, ...],
    stats: tuple[Tensor, Tensor] | None,
    key_norm_stats: str,
    q_conv: tuple[Tensor, Tensor] | None,
    k_conv: tuple[Tensor, Tensor] | None,
    scale: float,
    inner_lr: float,
    out_rows: tuple[int, int],
    n_split: int | None,
    allow_tf32: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Update + reduce + apply. Inputs are validated by the caller (``function.py``).

    q, k, v: [B, N, H, D] one dtype, any strides; w1, w2: [H, D, D]; stats: (mean, rstd) [B, n_sets, C] fp32
    or None (keys used as given); convs: (weight [C, 1, 3, 3], bias [C]).
    Returns o [B, N_out, C] contiguous in q.dtype and W1', W2' [B, H, D, D] fp32.
    """
    B, N, H, D = q.shape
    C = H * D
    dev = q.device
    w1f = w1.detach().to(device=dev, dtype=torch.float32).contiguous()
    w2f = w2.detach().to(device=dev, dtype=torch.float32).contiguous()
    mean, rstd = stats if stats is not None else (w1f, w1f)  # dummies, never read when NORMALIZE is off
    kcw, kcb = _conv_params(k_conv, C, dev)
    qcw, qcb = _conv_params(q_conv, C, dev)
    precision = dot_precision(q.dtype, allow_tf32)

    splits = n_split if n_split is not None else default_n_split(N, B * H, dev)
    piece = round_up(ceil_div(N, max(splits, 1)), ROW_ALIGN)
    table = work_table(segments, 0, N, piece, key_norm_stats, dev)
    n_work = table.shape[0]
    workspace = torch.empty(B * H, n_work, 2, D, D, device=dev, dtype=torch.float32)
    update = launcher("update", D, k.dtype)
    n_sets = mean.shape[1] if stats is not None else 1
    update[(B * H, n_work)](
        k, v, w1f, w2f, mean, rstd, kcw, kcb, table, workspace,
        H, C, n_sets, n_work, *k.stride(), *v.stride(),
        D=D, NORMALIZE=stats is not None, CONV=k_conv is not None, DOT_PRECISION=precision,
    )  # fmt: skip

    w_new = torch.empty(B, H, 2, D, D, device=dev, dtype=torch.float32)
    block_r = min(D, 32)
    _ttt_reduce_kernel[(B * H, D // block_r)](
        workspace, w1f, w2f, w_new, H, n_work, float(inner_lr * scale / N), D=D, BLOCK_R=block_r
    )

    a, b = out_rows
    o = torch.empty(B, b - a, C, device=dev, dtype=q.dtype)
    apply_rows = APPLY_ROWS_CUDA if dev.type == "cuda" else APPLY_ROWS_OTHER
    apply_table = work_table(segments, a, b, apply_rows, "joint", dev)
    apply = launcher("apply", D, q.dtype)
    apply[(B * H, apply_table.shape[0])](
        q, w_new, qcw, qcb, apply_table, o,
        H, a, *q.stride(), o.stride(0), o.stride(1),
        D=D, CONV=q_conv is not None, DOT_PRECISION=precision,
    )  # fmt: skip
    return o, w_new[:, :, 0], w_new[:, :, 1]


def _conv_params(conv: tuple[Tensor, Tensor] | None, C: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Depthwise 3×3 weight as contiguous fp32 [C, 9] and bias [C] (views of fp32 parameters: no copy)."""
    if conv is None:
        dummy = torch.empty(1, device=device, dtype=torch.float32)  # never read (CONV is off)
        return dummy, dummy
    weight, bias = conv
    return (
        weight.detach().to(device=device, dtype=torch.float32).reshape(C, 9).contiguous(),
        bias.detach().to(device=device, dtype=torch.float32).reshape(C).contiguous(),
    )
