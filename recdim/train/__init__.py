"""Training: loop, distributed setup (DMP, planner, sharders), metrics and run directories."""
