"""Retraining at chosen dimensions: pruned models on their tier tables, dimension assignments (MDE) on
mixed-dimension tables, and the filling of tier tables from masked weights or a masked initialisation."""
