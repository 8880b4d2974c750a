"""Throughput of the NCSN++ score network: forward passes and training steps, images per second.

Modes: fp32 eager, bf16 autocast eager, bf16 autocast + channels_last + torch.compile; when
score_models is installed, its NCSNpp of the same size in fp32 eager is the baseline that
every mode is compared with.

Example:
    python benchmarks/score_net.py --size 256 --batch 64 --nf 64 --ch-mult 1,2,2,2 --device cuda
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import device_name, synchronize  # noqa: E402
from scorelens.priors.ncsnpp import NCSNpp  # noqa: E402

SIGMA_MIN, SIGMA_MAX = 1e-2, 50.0


@dataclass
class Result:
    name: str
    forward: float | None  # images / s
    train: float | None  # images / s
    note: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="image side length (pixels)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--ch-mult", type=str, default="1,2,2", help="comma-separated channel multipliers")
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument(
        "--attn-resolutions",
        type=str,
        default="16",
        help="comma-separated; values absent from the resolution pyramid are dropped",
    )
    p.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations before each measurement")
    p.add_argument("--compile-backend", type=str, default="inductor")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile mode")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            x = torch.randn(1, 2, 4, 4, device=device)
            nn.functional.conv2d(x, torch.randn(2, 2, 3, 3, device=device))
        return True
    except (RuntimeError, TypeError):
        return False


def images_per_second(
    step: Callable[[], object], batch: int, iters: int, warmup: int, device: torch.device
) -> float:
    """Batch size over the median time of one synchronised call of ``step``."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    # The median ignores occasional stalls (allocator, other processes) that a mean would absorb.
    return batch / statistics.median(times)


def sample_sigma(batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """VE-SDE time t ~ U(0, 1) [B] and its noise level sigma = smin (smax / smin)^t [B]."""
    t = torch.rand(batch, device=device)
    return t, SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t


def measure(
    name: str,
    score_fn: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor],
    model: nn.Module,
    x: Tensor,
    args: argparse.Namespace,
    autocast: bool,
) -> Result:
    """Time ``score_fn(model, x_noisy, t, sigma) -> score`` in inference and in a DSM training step."""
    device = x.device
    batch = x.shape[0]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)

    def forward_step() -> Tensor:
        t, sigma = sample_sigma(batch, device)
        with torch.no_grad(), amp:
            return score_fn(model, x, t, sigma)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> Tensor:
        t, sigma = sample_sigma(batch, device)
        z = torch.randn_like(x)
        with amp:
            score = score_fn(model, x + sigma[:, None, None, None] * z, t, sigma)
        # Denoising score matching, weighted by sigma^2: |sigma s + z|^2.
        loss = (sigma[:, None, None, None] * score.float() + z).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    model.eval()
    fwd = images_per_second(forward_step, batch, args.iters, args.warmup, device)
    model.train()
    train = images_per_second(train_step, batch, args.iters, args.warmup, device)
    return Result(name, fwd, train)


def build_ours(args: argparse.Namespace, attn: list[int], device: torch.device) -> NCSNpp:
    torch.manual_seed(args.seed)
    return NCSNpp(
        channels=args.channels,
        resolution=args.size,
        nf=args.nf,
        ch_mult=int_list(args.ch_mult),
        num_res_blocks=args.num_res_blocks,
        attn_resolutions=attn,
    ).to(device)


def ours_score(model: nn.Module, x: Tensor, t: Tensor, sigma: Tensor) -> Tensor:
    return model(x, sigma)


def baseline_score(model: nn.Module, x: Tensor, t: Tensor, sigma: Tensor) -> Tensor:
    # score_models' raw architecture is called as model(t, x); its ScoreModel divides by sigma(t).
    return model(t, x) / sigma[:, None, None, None]


def n_params(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def run(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    ch_mult = int_list(args.ch_mult)
    levels = [args.size // 2**i for i in range(len(ch_mult))]
    attn = [r for r in int_list(args.attn_resolutions) if r in levels]
    dropped = sorted(set(int_list(args.attn_resolutions)) - set(attn))
    if dropped:
        print(f"note: attention resolutions {dropped} are not in the pyramid {levels}; dropped")

    torch.manual_seed(args.seed)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    results: list[Result] = []

    try:
        from score_models.architectures import NCSNpp as BaselineNCSNpp
    except ImportError:
        BaselineNCSNpp = None
        print("note: score_models not installed; no baseline")
    if BaselineNCSNpp is not None:
        torch.manual_seed(args.seed)
        # score_models applies attention only in the middle block; attn_resolutions is passed for parity.
        base = BaselineNCSNpp(
            channels=args.channels,
            nf=args.nf,
            ch_mult=tuple(ch_mult),
            num_res_blocks=args.num_res_blocks,
            attn_resolutions=tuple(attn),
        ).to(device)
        r = measure("score_models fp32 eager", baseline_score, base, x, args, autocast=False)
        r.note = f"{n_params(base):.2f} M params"
        results.append(r)
        del base

    net = build_ours(args, attn, device)
    params = f"{n_params(net):.2f} M params"
    r = measure("fp32 eager", ours_score, net, x, args, autocast=False)
    r.note = params
    results.append(r)

    has_bf16 = bf16_supported(device)
    if has_bf16:
        r = measure("bf16 autocast eager", ours_score, build_ours(args, attn, device), x, args, autocast=True)
        r.note = params
        results.append(r)
    else:
        print(f"skip: bf16 autocast is not supported on {device}")
        results.append(Result("bf16 autocast eager", None, None, "bf16 unsupported"))

    name = f"bf16 + channels_last + compile ({args.compile_backend})"
    if args.skip_compile:
        results.append(Result(name, None, None, "skipped (--skip-compile)"))
    elif not has_bf16:
        results.append(Result(name, None, None, "bf16 unsupported"))
    else:
        net = build_ours(args, attn, device).to(memory_format=torch.channels_last)
        compiled = torch.compile(net, fullgraph=True, backend=args.compile_backend)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        try:
            # Compilation happens during the warm-up iterations, outside the timed ones.
            r = measure(name, ours_score, compiled, x_cl, args, autocast=True)
            r.note = f"{params}; mode took {time.perf_counter() - start:.0f} s incl. compile"
            results.append(r)
        except Exception as exc:  # any compiler failure only makes this mode unavailable
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"skip: torch.compile failed: {type(exc).__name__}: {first}")
            results.append(Result(name, None, None, "compile failed"))
    return results


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def ratio(v: float | None, ref: float | None) -> str:
    return "-" if v is None or ref is None or ref == 0 or math.isnan(ref) else f"{v / ref:.2f}x"


def print_table(args: argparse.Namespace, results: list[Result]) -> None:
    device = torch.device(args.device)
    base = next((r for r in results if r.name.startswith("score_models")), None)
    print()
    print(f"device: {device_name(device)} | torch {torch.__version__}")
    print(
        f"size {args.size}, batch {args.batch}, channels {args.channels}, nf {args.nf}, "
        f"ch_mult {args.ch_mult}, num_res_blocks {args.num_res_blocks}, iters {args.iters}, "
        f"warmup {args.warmup}"
    )
    header = ["mode", "fwd img/s", "train img/s", "fwd vs base", "train vs base", "note"]
    rows = [
        [
            r.name,
            fmt(r.forward),
            fmt(r.train),
            ratio(r.forward, base.forward if base else None),
            ratio(r.train, base.train if base else None),
            r.note,
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    print_table(args, results)


if __name__ == "__main__":
    main()
