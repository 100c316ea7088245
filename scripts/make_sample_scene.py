"""Regenerate the embedded sample scene in ``data/sample`` (deterministic).

Usage: ``python scripts/make_sample_scene.py [--out DIR] [--width 128] [--height 128] [--n-train 48] [--n-test 8]
[--seed 0]``. The committed dataset is the output with the default arguments.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recon.data.sample import SAMPLE_SCENE_DIR, make_sample_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_SCENE_DIR, help="output folder (replaced)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    out = make_sample_scene(args.out, width=args.width, height=args.height, n_train=args.n_train,
                            n_test=args.n_test, seed=args.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
