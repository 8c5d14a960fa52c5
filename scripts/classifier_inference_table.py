"""Table IV of aop: classifier inference speed per encoder, instances per second at batch 1 and 32.

    python scripts/classifier_inference_table.py                       # every registered encoder
    python scripts/classifier_inference_table.py --encoders resnet18,test_resnet --crop-size 4 32 32

Random weights (speed does not depend on them), the current device (CUDA when available, float16
autocast as the study trains), a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import gc

from aop.classification import available_encoders
from aop.classification.inference import inference_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default=",".join(available_encoders()))
    parser.add_argument("--head", default="slice", choices=["slice", "volume"])
    parser.add_argument("--crop-size", type=int, nargs=3, default=[16, 64, 64])
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        speed = inference_speed(
            name, head=args.head, in_chans=args.channels, crop_size=tuple(args.crop_size),
            batch_sizes=args.batch_sizes, repeats=args.repeats,
        )
        rows.append(speed)
        print(f"{name}: {speed['instances_per_s']}", flush=True)
        gc.collect()
    device = rows[0]["device"] if rows else "-"
    z, y, x = args.crop_size
    print(f"\n{args.head} head, crops {args.channels} x {z} x {y} x {x}, device {device}\n")
    header = " | ".join(f"batch {b} (instances/s)" for b in args.batch_sizes)
    print(f"| encoder | parameters (M) | {header} |")
    print("|---|---|" + "---|" * len(args.batch_sizes))
    for r in rows:
        cells = " | ".join(f"{r['instances_per_s'][b]:.1f}" for b in args.batch_sizes)
        print(f"| `{r['encoder']}` | {r['parameters'] / 1e6:.1f} | {cells} |")


if __name__ == "__main__":
    main()
