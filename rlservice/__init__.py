"""rlservice: offline RL experiments (PARS, PANI, DMG, TD3+BC, IQL) on Minari data, tuned on Ray, tracked in MLflow."""

__version__ = "0.1.0"
