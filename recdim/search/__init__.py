"""Search-method drivers (DNIS / AutoSrh, PEP, AutoDim) and baselines."""
