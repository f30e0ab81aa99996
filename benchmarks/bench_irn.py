"""Random-walk throughput: IRNet's dense squared transition matrix vs the sparse walk.

Both compute CAMs · T^(2^exp_times) (qaclims.random_walk). Dense squares an N×N matrix
(N = h·w strided pixels) `exp_times` times, O(N³) each; sparse applies a CSR matrix with
≈ 2D+1 entries a column 2^exp_times times. Sizes run from tiny maps up to the VOC-typical
strided map (500×375 image → 125×94). At that size one dense squaring is an 11750² matmul
(~3.2 TFLOP), so the dense path there only runs with --dense-voc.

    PYTHONPATH=. python benchmarks/bench_irn.py [--images 4] [--dense-voc]
"""

from __future__ import annotations

import argparse
import time

import torch

from qaclims.random_walk import propagate

SIZES = [(16, 12), (32, 24), (48, 36), (63, 47), (125, 94)]
DENSE_LIMIT = 63 * 47  # largest map the dense path runs on without --dense-voc


def images_per_s(method: str, inputs: list[tuple[torch.Tensor, torch.Tensor]], args) -> tuple:
    outputs = []
    start = time.perf_counter()
    for cams, edge in inputs:
        kwargs = {"radius": args.radius, "beta": args.beta, "exp_times": args.exp_times}
        outputs.append(propagate(cams, edge, method=method, **kwargs))
    return len(inputs) / (time.perf_counter() - start), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=4, help="maps per size and method")
    parser.add_argument("--classes", type=int, default=2, help="CAM channels per map")
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--dense-voc", action="store_true", help="also run dense at 125×94")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    print(
        f"radius {args.radius}, beta {args.beta}, exp_times {args.exp_times}, "
        f"{args.classes} classes, {torch.get_num_threads()} threads"
    )
    header = ("map", "pixels", "dense img/s", "sparse img/s", "ratio", "max |diff|")
    print("{:>8} {:>7} {:>12} {:>13} {:>7} {:>11}".format(*header))
    for h, w in SIZES:
        inputs = [
            (torch.rand(args.classes, h, w, generator=gen), torch.rand(h, w, generator=gen) * 0.5)
            for _ in range(args.images)
        ]
        sparse_rate, sparse_out = images_per_s("sparse", inputs, args)
        if h * w <= DENSE_LIMIT or args.dense_voc:
            dense_rate, dense_out = images_per_s("dense", inputs, args)
            diff = max(
                (a - b).abs().max().item() for a, b in zip(dense_out, sparse_out, strict=True)
            )
            dense_text = f"{dense_rate:12.3f}"
            ratio = f"{sparse_rate / dense_rate:7.1f}"
            diff_text = f"{diff:11.2e}"
        else:
            dense_text, ratio, diff_text = f"{'skipped':>12}", f"{'':>7}", f"{'':>11}"
        print(f"{h:>3}×{w:<4} {h * w:>7} {dense_text} {sparse_rate:13.3f} {ratio} {diff_text}")


if __name__ == "__main__":
    main()
