"""What every layer shares: user errors, atomic file writes and the run directory's layout.

It sits below model/, optim/, data/, metrics/ and training/, and imports none of them.
"""
