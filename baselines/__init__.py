"""Reference training baselines for the vlm_envs environments (install with ``pip install "vlm-envs[train]"``)."""
