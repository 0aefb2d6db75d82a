#!/usr/bin/env python
"""Search MemControl masks with NSGA-II, from Python (the ``memcontrol search`` command does the same from a shell).

    python examples/search_masks.py --train_data_dir faces --test_data_dir faces-test --output_dir search-out

Without data folders it uses the LFW demo set and the package's tiny pipeline (offline, CPU, a few minutes).
"""

from __future__ import annotations

import argparse
import os

from peft_memcontrol.sample_data import build_faces_dataset
from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig
from peft_memcontrol.search.inner_loop import InnerLoop, ProxyDataSpec
from peft_memcontrol.search.report import write_search_outputs
from peft_memcontrol.training import TrainingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", default=None)
    parser.add_argument("--test_data_dir", default=None)
    parser.add_argument("--output_dir", default="search-out")
    parser.add_argument("--population_size", type=int, default=8)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--max_train_steps", type=int, default=10)
    args = parser.parse_args()

    train_dir, test_dir = args.train_data_dir, args.test_data_dir
    if train_dir is None:
        demo = build_faces_dataset(os.path.join(args.output_dir, "demo-data"))
        train_dir, test_dir = demo.train_dir, demo.test_dir
    inner_loop = InnerLoop(
        ProxyDataSpec(train_dir, test_data_dir=test_dir, fraction=0.1, repeats=5),
        objectives=["noise_norm", "val_loss"],
        training=TrainingConfig(max_train_steps=args.max_train_steps, train_batch_size=4),
    )
    space = GenomeSpace.from_layout("sd15-reference-13", method="svdiff")  # the reference's 13 bits + log lr
    config = SearchConfig(population_size=args.population_size, generations=args.generations)
    result = MaskSearcher(space, inner_loop, config=config, output_dir=args.output_dir).run()
    paths = write_search_outputs(result, args.output_dir)
    knee = result.knee()
    print(f"knee: {knee.scores}, lr {knee.candidate.learning_rate:.2g}, config in {paths['chosen']['knee']}")
    # get_peft_model(unet, result.to_config(knee)) fine-tunes with it.


if __name__ == "__main__":
    main()
