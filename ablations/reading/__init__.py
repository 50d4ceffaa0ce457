"""Reading grids: run directories into rows of seeds (`rows.py`), statistics (`stats.py`), curves and
matched-loss reads (`curves.py`, `matched_loss.py`, `annealed.py`), the report's CSV tables (`tables.py`),
its sections (`sections.py`), plots (`plots.py`) and report.md (`report.py`)."""
