"""Masks at a budget and the mixed-dimension table planner."""
