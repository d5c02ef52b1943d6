"""ccrcc-grade: WHO/ISUP grade of clear-cell RCC from contrast CT (Lightning + Hydra + MONAI)."""
from src.utils import resolvers

resolvers.register()
