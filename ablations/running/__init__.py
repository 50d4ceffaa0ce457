"""Running grids: the grid file format (`grid.py`), cooldown branches (`cooldowns.py`), tuning sweeps
(`tuning.py`), the local runner (`runner.py`) and SLURM array jobs (`slurm.py`)."""
