"""How this project trains, studies and benchmarks the three papers (the papers themselves are the root's files).

Importing the lab registers its procedural stand-ins for the MANO / SMPL / SMPL-X files with `bodymodels`
(`lab/standins.py`), so the loaders work without the licensed files; `HMR_BODY_MODELS` still takes precedence.
Run its scripts as modules from the repository root: `python -m lab.ablate`, `python -m lab.bench`,
`python -m lab.records`.
"""
from lab import standins  # noqa: F401  (registers the stand-ins)
