"""The evolution core shared by both front ends: config, search space, optimizer, run folder, report."""
