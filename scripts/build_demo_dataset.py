#!/usr/bin/env python
"""Write the demo fine-tuning set (LFW faces from scikit-image) as diffusers image folders.

    python scripts/build_faces_dataset.py demo-faces
    accelerate launch examples/train_text_to_image_memcontrol.py --train_data_dir demo-faces/train --method full ...

See ``peft_memcontrol.sample_data.faces`` for the layout (train with a duplicated memorization subset, held-out
test, memorization). Deterministic in ``--seed``; needs scikit-image.
"""

from __future__ import annotations

import argparse

from peft_memcontrol.sample_data import build_faces_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--num_test", type=int, default=20)
    parser.add_argument("--num_memorization", type=int, default=10)
    parser.add_argument("--memorization_repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    demo = build_faces_dataset(
        args.output_dir, args.num_test, args.num_memorization, args.memorization_repeats, seed=args.seed
    )
    print(f"train: {demo.num_train_rows} rows in {demo.train_dir}")
    print(f"test: {demo.num_test} images in {demo.test_dir}")
    print(f"memorization subset: LFW ids {demo.memorization_ids} in {demo.memorization_dir}")


if __name__ == "__main__":
    main()
