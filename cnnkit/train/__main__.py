"""`python -m cnnkit.train MODEL ...` and `torchrun --nproc_per_node=N -m cnnkit.train ...`."""

import sys

from cnnkit.train.cli import train_main

sys.exit(train_main(sys.argv[1:]))
