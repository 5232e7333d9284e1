"""cryomap benchmarks: speed and memory, reported as medians and ratios against a peer measured in the same run."""
