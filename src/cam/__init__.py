"""Grad-CAM: heat maps (maps.py), their localisation scores (scores.py) and Figure 6 (figures.py)."""
